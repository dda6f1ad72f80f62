"""bench.families compares like with like: its plain FastAPI route answers what batchserve answers
for each new family's model (the same checkpoints, heads, target scaling, tokenization and answer
shape), several items of different lengths per body, so the benchmark cannot silently compare
different math."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import families
from bench.families_baseline_app import create_app
from tests.conftest import live_server, settings_for
from tests.numbers import assert_same_numbers


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return families.build_repository(tmp_path_factory.mktemp("families") / "repository")


@pytest.fixture(scope="module")
def batchserve(repository: Path) -> Iterator[str]:
    with live_server(settings_for(repository)) as url:
        yield url


def plain(repository: Path) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(repository))
    return httpx.AsyncClient(transport=transport, base_url="http://bench")


@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.name)
async def test_the_plain_route_answers_what_batchserve_answers(
    family: families.Family, repository: Path, batchserve: str
) -> None:
    items = family.items(random.Random(family.name))[:5]
    body = {"inputs": items, "top_k": len(family.config["labels"])}
    path = f"/v1/models/{family.name}/predict"
    expected = httpx.post(batchserve + path, json=body, timeout=30)
    assert expected.status_code == 200, expected.text
    answer = await plain(repository).post(path, json=body)
    assert answer.status_code == 200, answer.text
    assert_same_numbers(answer.json(), expected.json(), family.tolerance)


def test_the_bodies_carry_one_item_of_varying_length(tmp_path: Path) -> None:
    written = families.write_bodies(tmp_path)
    assert sorted(written) == sorted(f.name for f in families.FAMILIES)
    # Words, steps, characters.
    length = {"sentiment": lambda x: len(x.split()), "series": len, "names-bigru": len}
    for name, size in length.items():
        items = [json.loads(line)["inputs"] for line in written[name].read_text().splitlines()]
        assert all(len(item) == 1 for item in items)
        sizes = {size(item[0]) for item in items}
        assert len(sizes) > 1, f"{name}: every item has the same length"


async def test_the_plain_route_refuses_a_body_of_the_wrong_kind(repository: Path) -> None:
    http = plain(repository)
    assert (await http.post("/v1/models/series/predict", json={"inputs": ["a"]})).status_code == 422
    assert (
        await http.post("/v1/models/price/predict", json={"inputs": [[[1.0]]]})
    ).status_code == 422
