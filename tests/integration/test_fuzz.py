"""Schema-based fuzzing of the server with schemathesis, in process over ASGI.

Schemathesis reads the app's OpenAPI document and sends generated requests to every
operation: valid ones and ones that break the schema (wrong types, missing fields, bad
content types).  Every response must be a non-5xx status that the document declares
for that operation, with the declared content type and a body matching the declared
schema, errors included.  The run is bounded and derandomized, so CI repeats it exactly.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app, load_hosted_model
from server.ledger import Ledger
from server.settings import Settings

MODEL = "random-hmm:states=3,alphabet=3,horizon=6,seed=0"
CLIENT_KEY = "fuzz-client-key"
ADMIN_KEY = "fuzz-admin-key"
EXAMPLES_PER_OPERATION = 40

CHECKS = [
    negative_data_rejection,
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _app() -> object:
    settings = Settings(
        model=MODEL,
        api_keys=(CLIENT_KEY,),
        admin_key=ADMIN_KEY,
        probabilities=True,
        max_prompts_per_request=50,
        max_samples_per_prompt=200,
        max_tokens_per_request=5000,
        max_judge_sequences=50,
        quota_samples=20_000,
        log_level="WARNING",
    )
    # The test owns the ledger: schemathesis enters the app's lifespan once per call,
    # and an app-owned ledger would be closed at the first exit.
    return create_app(settings, model=load_hosted_model(MODEL), ledger=Ledger(":memory:"))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_fuzz_responses_match_openapi(case: schemathesis.Case) -> None:
    key = ADMIN_KEY if case.path == "/v1/judge/logprob" else CLIENT_KEY
    case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)


def test_fuzz_openapi_declares_error_bodies() -> None:
    document = schema.raw_schema
    complete = document["paths"]["/v1/complete"]["post"]["responses"]

    assert set(complete) >= {"200", "400", "401", "403", "413", "415", "422", "429", "503"}
    for status in ("400", "413", "422", "429", "503"):
        reference = complete[status]["content"]["application/json"]["schema"]["$ref"]
        assert reference.endswith("/ErrorBody")


@pytest.mark.parametrize(
    "path", ["/v1/model", "/v1/usage", "/v1/judge/logprob", "/healthz", "/metrics"]
)
def test_fuzz_openapi_lists_route(path: str) -> None:
    assert path in schema.raw_schema["paths"]
