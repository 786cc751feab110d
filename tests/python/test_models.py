"""GET /v1/models and /v1/models/{id} through the OpenAI SDK."""

from __future__ import annotations

import openai
import pytest

from helpers import UNKNOWN_MODEL


def test_models_list_contains_model(client: openai.OpenAI, model: str) -> None:
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert model in ids, ids
    for m in page.data:
        assert m.object == "model"
        assert isinstance(m.created, int)
        assert isinstance(m.owned_by, str) and m.owned_by


@pytest.mark.gateway  # the test engine only serves the list
def test_models_retrieve(client: openai.OpenAI, model: str) -> None:
    m = client.models.retrieve(model)
    assert m.id == model
    assert m.object == "model"
    listed = {x.id: x for x in client.models.list().data}[model]
    assert m.owned_by == listed.owned_by
    assert m.created == listed.created


@pytest.mark.gateway
def test_models_retrieve_unknown_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve(UNKNOWN_MODEL)
    e = info.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert e.param == "model"
