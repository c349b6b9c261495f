"""The run's settings: the folders and buckets a worker allows."""

import pytest

from flows import config


def test_a_folder_whose_name_extends_an_allowed_ones_is_outside_it(tmp_path, monkeypatch):
    for name in ("mnist/sub", "mnist-evil", "mnis"):
        (tmp_path / name).mkdir(parents=True)
    monkeypatch.setenv(config.ALLOWED_ROOTS_ENV, str(tmp_path / "mnist"))
    for outside in ("mnist-evil", "mnis", "."):
        with pytest.raises(ValueError, match="is outside the folders this worker allows"):
            config.confine(str(tmp_path / outside))
    for inside in ("mnist", "mnist/sub", "mnist/sub/../sub", "mnist/not-yet"):
        config.confine(str(tmp_path / inside))


def test_a_link_into_an_allowed_folder_counts_where_it_leads(tmp_path, monkeypatch):
    (tmp_path / "allowed").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "allowed" / "way-out").symlink_to(tmp_path / "outside")
    (tmp_path / "way-in").symlink_to(tmp_path / "allowed")
    monkeypatch.setenv(config.ALLOWED_ROOTS_ENV, str(tmp_path / "allowed"))
    with pytest.raises(ValueError, match="is outside"):
        config.confine(str(tmp_path / "allowed" / "way-out"))
    config.confine(str(tmp_path / "way-in"))


@pytest.mark.parametrize("url", ["s3://other/x", "s3://team/mnist-evil", "s3://team", "s3://team/mnis",
                                 "s3://team/mnist-evil/sub"])
def test_a_bucket_outside_the_allowed_prefixes_is_refused(url, monkeypatch):
    monkeypatch.setenv(config.ALLOWED_ROOTS_ENV, "/srv/mnist:s3://team/mnist")
    with pytest.raises(ValueError, match="is outside the buckets this worker allows \\(s3://team/mnist\\)"):
        config.confine_url(url)


@pytest.mark.parametrize("url", ["s3://team/mnist", "s3://team/mnist/", "s3://team/mnist/sub"])
def test_a_bucket_inside_an_allowed_prefix_is_taken(url, monkeypatch):
    monkeypatch.setenv(config.ALLOWED_ROOTS_ENV, "/srv/mnist:s3://team/mnist")
    config.confine_url(url)


def test_with_folders_allowed_and_no_bucket_every_bucket_is_refused(monkeypatch):
    monkeypatch.setenv(config.ALLOWED_ROOTS_ENV, "/srv/mnist")
    with pytest.raises(ValueError, match="allows \\(none\\)"):
        config.confine_url("s3://team/mnist")
