"""The HTTP inference service: FastAPI app, dynamic batching, model registry with canary routing, Prometheus
metrics, drift monitoring, shadow traffic, automatic canary rollback, API keys and sampled prediction logs.
Start it with `instaseg serve`; manage model versions with `instaseg models`. See docs/serving.md.

Files: `config.py` (settings) -> `registry.py` (SQLite + checkpoints) / `registration.py` -> `served.py` (a
loaded version behind `batching.py`) -> `deployments.py` (what serves which name, following the registry) ->
`service.py` (one request's prediction path, with `limits.py`, `drift.py`, `sampling.py`, `metrics.py`;
`shadow.py` copies production requests to a shadow version, `canary.py` judges canaries and rolls them
back or promotes them) -> `app.py` (routes; `http_inputs.py`, `middleware.py`, `auth.py`, `schemas.py`,
`errors.py`, `model_listing.py`) -> `server.py` (uvicorn).

Nothing is imported here, so `instaseg models list` reads the registry without loading the web stack.
"""
