"""Schemathesis checks for bench/schemathesis: every response is logged
(status and whether an error body is OpenAI-shaped) for the summary, and a
5xx or a 4xx that is not `{"error": {"message", "type", "param", "code"}}`
fails the test case."""
import json
import os

import schemathesis

LOG = os.environ.get("HERD_FUZZ_RESPONSE_LOG", "/dev/null")


def is_openai_error(body: bytes) -> bool:
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if not isinstance(doc, dict) or set(doc) != {"error"}:
        return False
    e = doc["error"]
    return (isinstance(e, dict) and set(e) == {"message", "type", "param", "code"}
            and isinstance(e["message"], str) and e["message"] != ""
            and isinstance(e["type"], str) and e["type"] != ""
            and (e["param"] is None or isinstance(e["param"], str))
            and (e["code"] is None or isinstance(e["code"], str)))


@schemathesis.check
def openai_error_shape(ctx, response, case):
    """Any 4xx/5xx body is OpenAI's error object; a 5xx fails in any case."""
    status = response.status_code
    shaped = is_openai_error(response.content) if status >= 400 else None
    with open(LOG, "a") as f:
        f.write(json.dumps({"op": f"{case.method} {case.path}", "status": status,
                            "shaped": shaped}) + "\n")
    if status >= 500:
        raise AssertionError(f"{status}: {response.content[:300]!r}")
    if status >= 400 and not shaped:
        raise AssertionError(f"{status} without OpenAI's error shape: {response.content[:300]!r}")
