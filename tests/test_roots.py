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


def _outside(allowed: str) -> str:
    return (f"outside the folders this worker allows ({allowed}); to allow it, add its folder to "
            f"{roots.ALLOWED_ROOTS_ENV} (folders separated by ':') before `make serve`")


def test_a_store_holding_a_link_that_leads_outside_is_refused(tmp_path, monkeypatch):
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    store = allowed / "artifacts"
    (store / "train" / "0123456789abcdef").mkdir(parents=True)
    (other / "elsewhere").mkdir(parents=True)
    (other / "model.keras").write_text("not the store's")
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, f"{allowed}:{other / 'elsewhere'}")
    both = f"{allowed}, {other / 'elsewhere'}"
    # Links that stay inside the allowed folders, to a folder and to a file, are the store's business.
    (store / "train" / "within").symlink_to(store / "train" / "0123456789abcdef")
    (store / "train" / "there").symlink_to(other / "elsewhere")
    roots.confine_store(str(store))
    for link, target in ((store / "train" / "0123456789abcdef" / "model.keras", other / "model.keras"),
                         (store / "runs", other)):
        link.symlink_to(target)
        with pytest.raises(ValueError) as refused:
            roots.confine_store(str(store))
        assert str(refused.value) == f"{store} holds {link}, a link to {target}, which is " + _outside(both)
        roots.confine(str(store))  # the folder itself is inside: only a store is checked for links
        link.unlink()
    with pytest.raises(ValueError) as refused:
        roots.confine(str(other))
    assert str(refused.value) == f"{other} is " + _outside(both)


def test_with_no_folders_allowed_every_store_is(tmp_path, monkeypatch):
    monkeypatch.delenv(roots.ALLOWED_ROOTS_ENV, raising=False)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "runs").symlink_to("/")
    roots.confine_store(str(tmp_path / "store"))
    roots.confine_store("s3://any/bucket")
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, "s3://team/mnist")  # buckets only: every folder is allowed
    roots.confine_store(str(tmp_path / "store"))


def test_a_bucket_and_a_buckets_local_copy_are_checked_as_both(tmp_path, monkeypatch):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv(remote.CACHE_ENV, str(allowed / ".s3-cache"))
    monkeypatch.setenv(roots.ALLOWED_ROOTS_ENV, f"{allowed}:s3://team/mnist:s3://team/fashion")
    roots.confine_store("s3://team/mnist/x")  # its local copy need not exist yet, and is not made
    assert not (allowed / ".s3-cache").exists()
    with pytest.raises(ValueError) as refused:
        roots.confine_store("s3://other/x")
    assert str(refused.value) == ("s3://other/x is outside the buckets this worker allows (s3://team/mnist, "
                                  "s3://team/fashion); to allow it, add its s3://bucket/prefix to "
                                  f"{roots.ALLOWED_ROOTS_ENV} before `make serve`")
    # A bucket's copy given by its folder: its bucket is checked too.
    copy = remote.local_root("s3://other/x")
    with pytest.raises(ValueError, match="^s3://other/x is outside the buckets"):
        roots.confine_store(str(copy))
    roots.confine_store(str(remote.local_root("s3://team/mnist/y")))
    # A copy that holds a link leading out of the allowed folders, or lies outside them.
    (remote.copy_path("s3://team/mnist/y") / "runs").symlink_to(tmp_path)
    with pytest.raises(ValueError, match=f"^{allowed}/.s3-cache/team/mnist/y holds .*/runs, a link to {tmp_path}, "):
        roots.confine_store("s3://team/mnist/y")
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ValueError) as refused:
        roots.confine_store("s3://team/mnist")
    assert str(refused.value) == (f"{tmp_path / 'cache' / 'team' / 'mnist'} is "
                                  + _outside(f"{allowed}"))
