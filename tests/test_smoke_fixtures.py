from tests.conftest import Api


async def test_list_starts_empty(api: Api) -> None:
    response = await api.get("/v2/webhooks")
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": [], "nextCursor": None}
