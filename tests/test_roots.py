"""The folders and buckets a worker allows."""

import pytest

from engine import remote, roots


def test_a_folder_whose_name_extends_an_allowed_ones_is_outside_it(tmp_path, monkeypatch):
    for name in ("mnist/sub", "mnist-evil", "mnis"):
        (tmp_path / name).mkdir(parents=True)
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, str(tmp_path / "mnist"))
    for outside in ("mnist-evil", "mnis", "."):
        with pytest.raises(ValueError, match="is outside the folders this worker allows"):
            roots.confine(str(tmp_path / outside))
    for inside in ("mnist", "mnist/sub", "mnist/sub/../sub", "mnist/not-yet"):
        roots.confine(str(tmp_path / inside))


def test_a_link_into_an_allowed_folder_counts_where_it_leads(tmp_path, monkeypatch):
    (tmp_path / "allowed").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "allowed" / "way-out").symlink_to(tmp_path / "outside")
    (tmp_path / "way-in").symlink_to(tmp_path / "allowed")
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, str(tmp_path / "allowed"))
    with pytest.raises(ValueError, match="is outside"):
        roots.confine(str(tmp_path / "allowed" / "way-out"))
    roots.confine(str(tmp_path / "way-in"))


@pytest.mark.parametrize("url", ["s3://other/x", "s3://team/mnist-evil", "s3://team", "s3://team/mnis",
                                 "s3://team/mnist-evil/sub"])
def test_a_bucket_outside_the_allowed_prefixes_is_refused(url, monkeypatch):
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, "/srv/mnist:s3://team/mnist")
    with pytest.raises(ValueError, match="is outside the buckets this worker allows \\(s3://team/mnist\\)"):
        roots.confine_url(url)


@pytest.mark.parametrize("url", ["s3://team/mnist", "s3://team/mnist/", "s3://team/mnist/sub"])
def test_a_bucket_inside_an_allowed_prefix_is_taken(url, monkeypatch):
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, "/srv/mnist:s3://team/mnist")
    roots.confine_url(url)


def test_with_folders_allowed_and_no_bucket_every_bucket_is_refused(monkeypatch):
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, "/srv/mnist")
    with pytest.raises(ValueError, match="allows \\(none\\)"):
        roots.confine_url("s3://team/mnist")


def test_a_bucket_address_has_one_spelling(monkeypatch, tmp_path):
    """`s3://team/mnist//x` and `s3://team/mnist/x` are one store: one local copy, one identity for its locks."""
    monkeypatch.setenv("MNIST_PIPELINE_S3_CACHE", str(tmp_path))
    spellings = ["s3://team/mnist/x", "s3://team/mnist//x", "s3://team//mnist/./x/", "s3://team/mnist/x/"]
    assert {remote.bucket_path(url) for url in spellings} == {"team/mnist/x"}
    assert {remote.copy_path(url) for url in spellings} == {tmp_path / "team" / "mnist" / "x"}
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, "s3://team//mnist/")
    for url in spellings:
        roots.confine_url(url)
    with pytest.raises(ValueError):
        roots.confine_url("s3://team//mnist-evil")
