"""Email open and click tracking: signed tokens, the HTML rewrite, and the gateway's endpoints."""

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agents.channels.tracking import track_html, verify
from streams.signed import sign
from gateway.tracking import tracking_routes
from streams.settings import Settings
from tests.unit import records

SETTINGS = Settings(public_url="https://notify.example.com", tracking_secret="s3cret")
SECRET = "s3cret"
TASK = records.delivery_task()


def test_a_token_verifies_with_its_secret_only() -> None:
    token = sign(SECRET, {"n": str(TASK["notification_id"]), "u": "https://example.com/a"})
    assert verify(SECRET, token) == {"n": str(TASK["notification_id"]), "u": "https://example.com/a"}
    assert verify("other", token) is None


@pytest.mark.parametrize("forged", ["", "abc", "a.b.c", "x" * 5000, "e30.AAAA", "%%%.%%%"])
def test_forged_tokens_do_not_verify(forged: str) -> None:
    assert verify(SECRET, forged) is None


def test_an_altered_url_does_not_verify() -> None:
    token = sign(SECRET, {"n": "1", "u": "https://example.com/a"})
    other = sign(SECRET, {"n": "1", "u": "https://evil.example/"})
    body, mac = token.split(".")
    assert verify(SECRET, f"{other.split('.')[0]}.{mac}") is None


def test_links_go_through_the_redirect_and_a_pixel_is_added() -> None:
    html = '<p><a href="https://shop.example.com/o?id=1&amp;x=2">order</a> <a href="mailto:a@b.c">m</a></p>'
    tracked = track_html(html, TASK, SETTINGS)
    [token] = re.findall(r'href="https://notify\.example\.com/t/c/([^"]+)"', tracked)
    assert verify(SECRET, token)["u"] == "https://shop.example.com/o?id=1&x=2"  # the URL, unescaped
    assert 'href="mailto:a@b.c"' in tracked  # only http(s) links are tracked
    [pixel] = re.findall(r'<img src="https://notify\.example\.com/t/o/([^"]+)"', tracked)
    assert verify(SECRET, pixel)["n"] == str(TASK["notification_id"])


@pytest.fixture
async def tracked() -> AsyncIterator[tuple[TestClient, list[dict[str, Any]]]]:
    published: list[dict[str, Any]] = []

    async def publish(event: dict[str, Any]) -> None:
        published.append(event)

    app = web.Application()
    app.add_routes(tracking_routes(SETTINGS, publish))
    async with TestClient(TestServer(app)) as client:
        yield client, published


def link_token(url: str) -> str:
    html = track_html(f'<a href="{url}">x</a>', TASK, SETTINGS)
    return re.search(r"/t/c/([^\"]+)", html).group(1)


async def test_a_click_is_an_event_and_a_redirect(tracked: tuple[TestClient, list]) -> None:
    client, published = tracked
    response = await client.get(f"/t/c/{link_token('https://example.com/x')}", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "https://example.com/x"
    [event] = published
    assert (event["status"], event["detail"], event["notification_id"]) == ("clicked", "https://example.com/x",
                                                                          TASK["notification_id"])


async def test_a_forged_click_redirects_nowhere(tracked: tuple[TestClient, list]) -> None:
    client, published = tracked
    token = link_token("https://example.com/x")
    body, mac = token.split(".")
    evil = sign("guess", {"n": str(uuid.uuid4()), "u": "https://evil.example/"}).split(".")[0]
    response = await client.get(f"/t/c/{evil}.{mac}", allow_redirects=False)
    assert response.status == 400 and "Location" not in response.headers
    assert published == []


async def test_an_open_is_an_event_and_a_gif(tracked: tuple[TestClient, list]) -> None:
    client, published = tracked
    html = track_html("<p>hi</p>", TASK, SETTINGS)
    token = re.search(r"/t/o/([^\"]+)", html).group(1)
    response = await client.get(f"/t/o/{token}")
    assert response.status == 200 and response.content_type == "image/gif"
    assert [e["status"] for e in published] == ["opened"]
    forged = await client.get("/t/o/nope.nope")
    assert forged.status == 200 and len(published) == 1  # a pixel anyway, but no event
