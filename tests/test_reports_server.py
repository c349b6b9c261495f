"""The reports server of `make serve`: run reports and report entries only, read-only, behind the API's basic auth."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from ops import reports_server

RUN = str(uuid.UUID(int=7))
FINGERPRINT = "0123456789abcdef"


def request(app, path: str, method: str = "GET", **kwargs) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(send())


@pytest.fixture
def store(tmp_path):
    """A store as runs leave it: reports beside entries, the run log, the locks' folder with Redis's URL."""
    root = tmp_path / "artifacts"
    for folder in (f"runs/{RUN}", f"report/{FINGERPRINT}", f"train/{FINGERPRINT}", ".locks", "champions"):
        (root / folder).mkdir(parents=True)
    (root / f"runs/{RUN}/report.html").write_text("<h1>the run's report</h1>")
    (root / f"runs/{RUN}/sweep.csv").write_text("lr,accuracy\n")
    (root / f"report/{FINGERPRINT}/per_class.png").write_bytes(b"\x89PNG")
    (root / f"report/{FINGERPRINT}/manifest.json").write_text("{}")
    (root / f"train/{FINGERPRINT}/model.keras").write_bytes(b"weights")
    (root / ".locks/redis.url").write_text("redis://:password@127.0.0.1:6379/0")
    (root / "champions/mnist.json").write_text("{}")
    (root / "runs.jsonl").write_text("{}\n")
    return root


def test_reports_are_served_read_only(store):
    app = reports_server.create_app(str(store))
    page = request(app, f"/runs/{RUN}/report.html")
    assert page.status_code == 200 and page.text == "<h1>the run's report</h1>"
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none' covers scripts
    assert request(app, f"/report/{FINGERPRINT}/per_class.png").content == b"\x89PNG"
    assert request(app, f"/runs/{RUN}/sweep.csv").status_code == 200
    assert request(app, f"/runs/{RUN}/report.html", "HEAD").status_code == 200
    for method in ("POST", "PUT", "DELETE"):
        assert request(app, f"/runs/{RUN}/report.html", method).status_code == 405


@pytest.mark.parametrize("path", [
    "/", "/runs/", f"/runs/{RUN}/", f"/report/{FINGERPRINT}",  # listings
    "/.locks/redis.url", f"/runs/{RUN}/%2e%2e/%2e%2e/.locks/redis.url",
    f"/report/{FINGERPRINT}/manifest.json", f"/train/{FINGERPRINT}/model.keras", "/champions/mnist.json",
    "/runs.jsonl", f"/runs/{RUN}/.report.html", f"/runs/{RUN}/nothing.html", f"/runs/{RUN}/report%00.html",
])
def test_nothing_but_reports_is_served(store, path):
    (store / f"runs/{RUN}/.report.html").write_text("a dot-file")
    response = request(reports_server.create_app(str(store)), path)
    assert response.status_code == 404
    assert "password" not in response.text and "Index of" not in response.text


def test_no_link_is_ever_followed(store, tmp_path):
    """Not even to another report: a file checked, then swapped for a link before it is read, is never served."""
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "shadow.html").write_text("root:$6$hash")
    evil = str(uuid.UUID(int=8))
    (store / "runs" / evil).symlink_to(outside)  # a run folder that is a link to the system's configuration
    (store / f"runs/{RUN}/passwd.html").symlink_to(outside / "shadow.html")
    (store / f"runs/{RUN}/redis.md").symlink_to(store / ".locks/redis.url")  # a link inside the store
    (store / f"runs/{RUN}/entry.png").symlink_to(store / f"report/{FINGERPRINT}/per_class.png")
    app = reports_server.create_app(str(store))
    for path in (f"/runs/{evil}/shadow.html", f"/runs/{RUN}/passwd.html", f"/runs/{RUN}/redis.md"):
        response = request(app, path)
        assert response.status_code == 404 and "hash" not in response.text and "password" not in response.text
    assert request(app, f"/runs/{RUN}/entry.png").status_code == 404
    for path in (f"runs/{RUN}/redis.md", f"runs/{evil}/shadow.html"):  # a link as the file, or as a folder
        with pytest.raises(OSError):
            reports_server.read_beneath(str(store), path)
    assert reports_server.read_beneath(str(store), f"report/{FINGERPRINT}/per_class.png") == b"\x89PNG"


def test_with_credentials_set_every_request_needs_them(store):
    app = reports_server.create_app(str(store), "admin:s3cret")
    for kwargs in ({}, {"auth": ("admin", "wrong")}, {"auth": ("admin", "s3cret!")},
                   {"headers": {"Authorization": "Basic not-base64!"}}, {"headers": {"Authorization": "Bearer x"}}):
        refused = request(app, f"/runs/{RUN}/report.html", **kwargs)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
        assert "the run's report" not in refused.text
    assert request(app, f"/runs/{RUN}/report.html", auth=("admin", "s3cret")).status_code == 200


def test_a_store_not_made_yet_serves_nothing_until_it_is(tmp_path):
    root = tmp_path / "later"
    app = reports_server.create_app(str(root))
    assert request(app, f"/runs/{RUN}/report.html").status_code == 404
    (root / "runs" / RUN).mkdir(parents=True)
    (root / "runs" / RUN / "report.html").write_text("now")
    assert request(app, f"/runs/{RUN}/report.html").text == "now"


def test_the_app_make_serve_starts_takes_the_store_and_the_apis_credentials_from_the_environment(store, monkeypatch):
    monkeypatch.setenv("MNIST_PIPELINE_REPORTS_ROOT", str(store))
    monkeypatch.setenv("PREFECT_SERVER_API_AUTH_STRING", "admin:s3cret")
    app = reports_server.from_environment()
    assert request(app, f"/runs/{RUN}/report.html").status_code == 401
    assert request(app, f"/runs/{RUN}/report.html", auth=("admin", "s3cret")).text == "<h1>the run's report</h1>"
