"""MLflow's own server as `harness ui` runs it (`mlflow server --app-name harness`), with one change:
a browser opening it for the first time sees the sweeps' trials, not an empty GenAI overview.

MLflow 3.17's UI keeps its view in the browser's localStorage: the GenAI / machine-learning switch
(GenAI unless the user flipped it; the experiment's `mlflow.experimentKind` tag is not read), an
Assistant panel opened on the first visit, and, per experiment, the runs table's columns, sort and filter (MLflow's own default: Source, Models,
Dataset). The first page therefore carries a script that fills in those keys where the browser has
none, so nothing the user chose is overwritten: the machine-learning view, the runs table at full
width, every trial as a row best first, and the method, lr, seed, validation loss and GSM8K score
columns.
"""

import json
import os

from mlflow.server.fastapi_app import app as mlflow_app

FIRST = {"mlflow.workflowType_v1": "machine_learning",  # not the GenAI view
         "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True}  # the Assistant panel stays closed
COLUMNS = ("params.`method`", "params.`lr`", "params.`seed`", "metrics.`val_loss`")


def view(metrics: set[str]) -> dict:
    """The runs table of an experiment whose runs logged these metrics."""
    scores = sorted(f"metrics.`{m}`" for m in metrics if m.endswith("_flexible"))
    return {"selectedColumns": [*COLUMNS, *scores], "orderByKey": "metrics.`val_loss`", "orderByAsc": True,
            "searchFilter": "tags.`harness.kind` = 'trial'"}


def seeds(uri: str) -> dict[str, str]:
    """localStorage key -> value for every experiment of the store but MLflow's empty Default."""
    from harness.tracking import client
    mlf = client(uri)
    out = {key: json.dumps(value) for key, value in FIRST.items()}
    for exp in mlf.search_experiments():
        if exp.name == "Default":
            continue
        runs = mlf.search_runs([exp.experiment_id], "tags.`harness.kind` = 'trial'", max_results=1)
        metrics = set(runs[0].data.metrics) if runs else set()
        page = json.dumps([exp.experiment_id], separators=(",", ":"))  # the UI's JSON.stringify of its ids
        out[f"MLflowLocalStorage-1.1-ExperimentPage-{page}-ReactComponentState"] = json.dumps(view(metrics))
    return out


def script(values: dict[str, str]) -> bytes:
    keys = json.dumps(values).replace("</", "<\\/")
    return (f"<script>(function(s,v){{for(var k in v)if(s.getItem(k)===null)s.setItem(k,v[k]);}})"
            f"(window.localStorage,{keys});</script>").encode()


class FirstOpen:
    """ASGI middleware: the UI's page (GET /) with the script before its own; everything else as is.
    The page is sent uncached, since the script names the store's experiments of the moment."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != "/":
            return await self.app(scope, receive, send)
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                      if k not in (b"if-none-match", b"if-modified-since")]}
        start, body = {}, []

        async def keep(message):
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    await send_page(send, start, b"".join(body))

        await self.app(scope, receive, keep)


async def send_page(send, start, page: bytes):
    if start.get("status") == 200 and b"<head>" in page:
        page = page.replace(b"<head>", b"<head>" + script(seeds(os.environ["MLFLOW_BACKEND_STORE_URI"])), 1)
    drop = (b"content-length", b"etag", b"last-modified", b"cache-control")
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in drop]
    headers += [(b"content-length", str(len(page)).encode()), (b"cache-control", b"no-store")]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": page})


app = FirstOpen(mlflow_app)
