"""Vendor hooks on the shared core against misbehaving servers: a Gainsight PX key never follows a
redirect to another host, a redirected mediarithmics upload is an error, an HTML 200 is typed."""

from __future__ import annotations

import pytest

from airflow_provider_profiles.hooks.base import VendorRedirectError, VendorResponseError
from airflow_provider_profiles.hooks.gainsight_px import GainsightPXHook
from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
from tests.misbehaving_server import response

KEY = "px-key-redirect-test-0a9c7e"


@pytest.mark.parametrize("status", [302, 307])
def test_gainsight_key_is_never_sent_to_the_redirect_target(servers, airflow_connection, status):
    elsewhere = servers(lambda r: response(200, '{"identifyId": "u1"}'))
    api = servers(lambda r: response(status, "", {"Location": f"http://localhost:{elsewhere.port}/v1/users/u1"}))
    airflow_connection("gainsight_px_default", "gainsight_px", password=KEY,
                       extra={"base_url": f"{api.url}/v1", "product_key": "AP-REDIRECT-TEST-2"})
    hook = GainsightPXHook()
    with pytest.raises(VendorRedirectError):
        hook.get_user("u1")
    with pytest.raises(VendorRedirectError, match="POST"):
        hook.create_user({"identifyId": "u1"})
    assert elsewhere.received == []


def test_mediarithmics_redirected_upload_and_html_answers_are_typed(servers, airflow_connection):
    def answer(received):
        if received.method == "POST":
            return response(302, "", {"Location": "/v1/datamarts/1000/document_imports/7/executions/1"})
        return response(200, "<html>login page</html>", content_type="text/html")

    api = servers(answer)
    airflow_connection("mediarithmics_default", "mediarithmics", password="tok-redirect-1f",
                       extra={"base_url": f"{api.url}/v1", "datamart_id": "1000"})
    hook = MediarithmicsHook()
    with pytest.raises(VendorRedirectError, match="POST"):
        hook.create_execution("7", b'{"a": 1}\n', content_type="application/x-ndjson")
    with pytest.raises(VendorResponseError, match="HTTP 200") as raised:
        hook.get_execution("7", "1")
    assert raised.value.status == 200
    assert [r.method for r in api.received] == ["POST", "GET"]
