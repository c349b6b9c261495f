import json

import numpy as np
import pytest
from PIL import Image

from flows import cli
from tasks import predict, train
from tasks.config import TrainParams
from tasks.download import download_dataset
from tasks.preprocess import preprocess_dataset
from tasks.store import ArtifactStore
from tests.synthetic import glyph, write_glyph_mirror


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("glyphs")
    store = str(folder / "artifacts")
    raw = download_dataset.fn(store, "mnist", str(write_glyph_mirror(folder / "mirror")))
    data = preprocess_dataset.fn(store, raw)
    model = train.train_model.fn(store, data, TrainParams(epochs=4, batch_size=16))
    return ArtifactStore(store).path(model) / train.MODEL


def test_to_mnist_centres_white_ink_on_black():
    paper = np.full((280, 280), 255.0)
    paper[40:120, 200:230] = 0.0  # a dark bar near the top right
    image = predict.to_mnist(paper)
    assert image.shape == (28, 28, 1) and image.dtype == np.float32
    assert image[0, 0, 0] == 0.0 and image.max() == pytest.approx(1.0, abs=0.05)
    rows, cols = np.nonzero(image[..., 0] > 0.5)
    assert abs(rows.mean() - 13.5) < 2 and abs(cols.mean() - 13.5) < 2
    assert rows.max() - rows.min() + 1 <= 20


def test_predict_classifies_typed_digits_at_any_size(model_path, tmp_path, capsys):
    rng = np.random.default_rng(42)
    files = []
    for digit in range(10):
        for size, paper in ((28, False), (280, True)):
            path = tmp_path / f"{digit}-{size}.png"
            Image.fromarray(glyph(digit, size, rng, ink_on_paper=paper)).convert("RGB").save(path)
            files.append((digit, path))
    assert cli.main(["predict", *[str(p) for _, p in files], "--model", str(model_path), "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    right = sum(r["class"] == digit for (digit, _), r in zip(files, results))
    assert right >= 0.9 * len(files)
    assert all(abs(sum(r["probabilities"]) - 1) < 1e-3 for r in results)


def test_non_image_is_refused_in_one_line(model_path, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    assert cli.main(["predict", str(text), "--model", str(model_path)]) == cli.EXIT_INVALID
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.png is not an image" in err


def test_without_a_champion_the_message_says_what_to_do(tmp_path, capsys):
    image = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(image)
    assert cli.main(["predict", str(image), "--artifacts-dir", str(tmp_path)]) == cli.EXIT_INVALID
    assert "no mnist champion" in capsys.readouterr().err
