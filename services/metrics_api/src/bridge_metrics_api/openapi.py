"""The OpenAPI 3.1 description served at `/openapi.json`, built from `params` (one source).

docs/api.md's "HTTP API (metrics)" section is generated from this document
(`python -m bridge_metrics_api.apidoc --write`), and a test checks they agree.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from . import lag_history, params, planner

_INT = {"type": "integer"}
_NUM = {"type": "number"}
_NULLABLE_NUM = {"type": ["number", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_SEVERITY_PROPS: dict[str, Any] = {s: _INT for s in params.SEVERITIES}
_SEVERITY_COUNTS = {"type": "object", "properties": _SEVERITY_PROPS}
_WINDOW = {
    "type": "object",
    "description": "`events`, `errors` (error + critical), `error_rate` (errors / events, 0 "
    "when none), `by_severity`",
    "properties": {
        "events": _INT,
        "errors": {**_INT, "description": "severity error or critical"},
        "error_rate": {**_NUM, "description": "errors / events; 0 when there were no events"},
        "by_severity": _SEVERITY_COUNTS,
    },
}
_ALERT = {
    "type": "object",
    "properties": {
        "fingerprint": {"type": "string"},
        "rule": {"type": "string"},
        "severity": {"type": "string"},
        "value": _NULLABLE_NUM,
        "threshold": _NULLABLE_NUM,
        "summary": {"type": "string"},
        "started_at": {"type": ["string", "null"]},
    },
}
_INSTANCE = {
    "type": "object",
    "properties": {
        "service": {"type": "string"},
        "instance": {"type": "string"},
        "state": {"type": "string", "enum": ["up", "down"]},
        "up": {"type": "boolean"},
        "last_heartbeat": _TIME,
        "age_seconds": _NUM,
        "interval_seconds": _NUM,
        "started_at": _TIME,
        "uptime_seconds": _NUM,
        "version": {"type": "string"},
        "status": {"type": "object", "description": "what the service reports (connections, lag…)"},
    },
}

SCHEMAS: dict[str, Any] = {
    "Overview": {
        "type": "object",
        "description": "Each part is null when its source did not answer; `errors` says why.",
        "properties": {
            "ts": {**_TIME, "description": "when the figures were taken"},
            "intents": {
                "type": ["object", "null"],
                "description": "from the source database's `intents` table",
                "properties": {
                    "by_status": {
                        "type": "object",
                        "additionalProperties": _INT,
                        "description": "status → count (50 largest; the rest under `other`)",
                    },
                    "total": _INT,
                    "failed_5m": {
                        **_INT,
                        "description": "status failed, updated in the last 5 min",
                    },
                },
            },
            "audit": {
                "type": ["object", "null"],
                "description": "windows 5m, 1h, 24h ending now",
                "properties": {"5m": _WINDOW, "1h": _WINDOW, "24h": _WINDOW},
            },
            "corrections": {
                "type": ["object", "null"],
                "properties": {
                    "count_1h": {**_INT, "description": "`intent.corrected` in the last hour"}
                },
            },
            "gateway": {
                "type": ["object", "null"],
                "properties": {
                    "connections": {**_INT, "description": "sum over every live gateway"},
                    "instances": {**_INT, "description": "gateways whose heartbeat is fresh"},
                    "replicas": {
                        "type": "object",
                        "additionalProperties": _INT,
                        "description": "open connections per gateway replica (from its "
                        "presence lease; absent when no gateway writes one)",
                    },
                    "topics": {
                        "type": "object",
                        "description": "per topic: subscriptions (listed in presence or "
                        "hidden) in total and per replica",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "subscriptions": _INT,
                                "replicas": {"type": "object", "additionalProperties": _INT},
                            },
                        },
                    },
                },
            },
            "notifier": {
                "type": ["object", "null"],
                "properties": {
                    "lag_seconds": {
                        **_NULLABLE_NUM,
                        "description": "the leader's relay lag; null when no notifier is up",
                    },
                    "outbox_backlog": {**_NULLABLE_NUM, "description": "outbox rows not relayed"},
                    "leader": {"type": ["string", "null"], "description": "leader instance"},
                },
            },
            "etl": {
                "type": ["object", "null"],
                "properties": {
                    "lag_seconds": {
                        **_NULLABLE_NUM,
                        "description": "largest over ETL workers that are up; null when none",
                    }
                },
            },
            "services": {
                "type": ["object", "null"],
                "properties": {
                    "up": _INT,
                    "down": {
                        **_INT,
                        "description": "instances that missed 3 heartbeats and have not yet "
                        "expired (BRIDGE_HEARTBEAT_EXPIRY)",
                    },
                    "instances_up": {
                        "type": "object",
                        "additionalProperties": _INT,
                        "description": "service name → instances up; a service with none "
                        "is absent from the map",
                    },
                },
            },
            "alerts": {
                "type": ["object", "null"],
                "description": "from the alerter's state in Redis",
                "properties": {
                    "firing": {
                        "type": "array",
                        "items": _ALERT,
                        "description": "`fingerprint`, `rule`, `severity`, `value`, `threshold`, "
                        "`summary`, `started_at`; most severe first",
                    },
                    "count": _INT,
                },
            },
            "errors": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "description": "part → why it is null (a source that did not answer)",
            },
        },
    },
    "Timeline": {
        "type": "object",
        "properties": {
            "bucket": {"type": "string"},
            "since": {**_TIME, "description": "the range asked for, in UTC"},
            "until": _TIME,
            "action": {"type": ["string", "null"], "description": "the action filter, if any"},
            "severities": {
                "type": "array",
                "items": {"type": "string"},
                "description": "the severities counted (all five unless filtered)",
            },
            "points": {
                "type": "array",
                "description": "every bucket from the one holding `since` to `until`, zeros "
                "included; one count per severity and `total`",
                "items": {
                    "type": "object",
                    "properties": {"t": _TIME, "total": _INT, **_SEVERITY_PROPS},
                },
            },
            "totals": {
                "type": "object",
                "additionalProperties": _INT,
                "description": "per severity and `total` over the range",
            },
        },
    },
    "Corrections": {
        "type": "object",
        "properties": {
            "since": _TIME,
            "until": _TIME,
            "total": {**_INT, "description": "corrections in the range"},
            "limit": _INT,
            "per_hour": {
                "type": "array",
                "description": "every UTC hour of the range with its count",
                "items": {"type": "object", "properties": {"t": _TIME, "count": _INT}},
            },
            "latest": {
                "type": "array",
                "description": "newest first: `source_id`, `created_at`, `intent_id`, `actor`, "
                "`severity`, `details`",
                "items": {
                    "type": "object",
                    "properties": {
                        "source_id": _INT,
                        "created_at": _TIME,
                        "intent_id": {"type": ["string", "null"]},
                        "actor": {"type": "string"},
                        "severity": {"type": "string"},
                        "details": {"type": "object"},
                    },
                },
            },
        },
    },
    "Lag": {
        "type": "object",
        "properties": {
            "window": {"type": "string", "enum": list(lag_history.WINDOWS)},
            "since": _TIME,
            "until": _TIME,
            "points": _INT,
            "topics": {
                "type": "object",
                "description": "topic → hop (`commit`, `delivery`, `store`) → `p99_max` "
                "(seconds) and `series` (`points` values, seconds or null), worst topics first",
                "additionalProperties": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "p99_max": _NUM,
                            "series": {"type": "array", "items": _NULLABLE_NUM},
                        },
                    },
                },
            },
        },
    },
    "Services": {
        "type": "object",
        "properties": {
            "ts": _TIME,
            "up": _INT,
            "down": _INT,
            "services": {
                "type": "array",
                "items": _INSTANCE,
                "description": "every instance not yet expired (a crashed one is `down` "
                "until its last heartbeat is BRIDGE_HEARTBEAT_EXPIRY old, then gone): "
                "`service`, `instance`, `state` (up/down), `last_heartbeat`, "
                "`age_seconds`, `interval_seconds`, `started_at`, `uptime_seconds`, "
                "`version`, `status` (what it reports)",
            },
        },
    },
    "InvalidParameter": {
        "type": "object",
        "required": ["error", "parameter", "message"],
        "properties": {
            "error": {
                "type": "string",
                "enum": ["invalid_parameter", "beyond_retention"],
                "description": "`beyond_retention`: the range starts before the oldest counts "
                "the rollups keep",
            },
            "parameter": {"type": "string", "description": "the query parameter at fault"},
            "message": {"type": "string"},
            "detail": {"type": "array", "items": {"type": "object"}},
            "oldest": {
                **_TIME,
                "description": "`beyond_retention` only: the oldest time answered",
            },
        },
    },
    "GatewayToken": {
        "type": "object",
        "required": ["token", "expires_at"],
        "properties": {
            "token": {
                "type": "string",
                "description": "a gateway JWT (`?token=` or `Authorization: Bearer`), "
                "`sub` `dashboard:<sub of the ops token>`",
            },
            "expires_at": {**_TIME, "description": "its `exp`"},
            "expires_in": {**_INT, "description": "seconds it has left when issued"},
            "topics": {
                "type": "array",
                "items": {"type": "string"},
                "description": "what it may read: `audit_logs` and `alerts`",
            },
        },
    },
    "Error": {
        "type": "object",
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    },
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _refusals() -> dict[str, Any]:
    return {
        "401": _json(
            "No valid ops token (`Authorization: Bearer`) and no valid session cookie",
            "Error",
        ),
        "403": _json("The token (or session) lacks the `ops` scope", "Error"),
    }


_REFUSALS = _refusals()


def _get(
    summary: str, description: str, schema: str, ps: tuple[params.Param, ...] = ()
) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "description": description,
            "parameters": [
                {
                    "name": p.name,
                    "in": "query",
                    "required": False,
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in ps
            ],
            "responses": {
                "200": _json("OK", schema),
                **_REFUSALS,
                "422": _json(
                    "A parameter is invalid, unknown or repeated, or the range lies beyond "
                    "the retention",
                    "InvalidParameter",
                ),
                "503": _json("A database did not answer in time", "Error"),
            },
        }
    }


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Bridge Lite metrics API",
            "version": "1.0.0",
            "description": "What ops query and the live dashboard reads. All answers are "
            "JSON; times are UTC ISO 8601 with `Z`. Bad parameters answer 422 with a body "
            "naming the parameter. Every route needs `Authorization: Bearer <JWT>` (signed "
            "with `BRIDGE_JWT_SECRET`, `scope` containing `ops`) or the session cookie of "
            "`GET /login?token=`; 401 without valid credentials, 403 without the scope "
            "(`BRIDGE_METRICS_AUTH=disabled` turns this off).",
        },
        "security": [{"opsToken": []}, {"opsSession": []}],
        "paths": {
            "/api/v1/dashboard/overview": _get(
                "Overview",
                "Intents by status; audit events and error rate over the last 5 min, 1 h "
                "and 24 h (rollups: the last hour from minutes, 24 h from hours with minutes "
                "at the edges); corrections in the last hour; live gateway "
                "connections summed over every gateway; notifier lag and outbox backlog; "
                "ETL lag; services up/down; firing alerts.",
                "Overview",
            ),
            "/api/v1/dashboard/timeline": _get(
                "Audit events per bucket, by severity",
                "A minute counts when its start lies in [since, until). Counted from the "
                "rollups per UTC minute, hour and day: days in the middle of the range, hours "
                "beside them, minutes at the edges, each only where its buckets nest in the "
                "answer's (hours for `1h`/`1d`, days for `1d`); without `action` from the "
                "all-actions totals (one row per bucket). The counts equal a `GROUP BY` over "
                "the raw rows. A request reads at most "
                f"{planner.MAX_ROLLUP_BUCKETS} rollup buckets (so `1m`, `5m` and `15m` cover "
                "at most about 3 d 11 h); ranges starting before the rollups' retention "
                "answer 422 `beyond_retention`.",
                "Timeline",
                params.TIMELINE_PARAMS,
            ),
            "/api/v1/dashboard/corrections": _get(
                "Corrections per hour and the latest ones",
                "A correction is an audit log with action `intent.corrected`. Counts per "
                "UTC hour come from the per-hour rollup (minutes at the edges); the latest "
                "list from the rows (kept `BRIDGE_ETL_RETENTION_DAYS`, 90 by default).",
                "Corrections",
                params.CORRECTIONS_PARAMS,
            ),
            "/api/v1/dashboard/lag": _get(
                "Delivery lag per topic over a window",
                "Per topic and hop (`commit`: commit → relay publish, `delivery`: publish → "
                "gateway send, `store`: publish → ETL store), the worst last-minute p99 the "
                "metrics snapshots recorded over the window and a series of "
                f"{lag_history.POINTS} slices (each the worst p99 in it; null where no event "
                f"passed). The {lag_history.MAX_TOPICS} worst topics. Read from the snapshot "
                "stream (a day is kept).",
                "Lag",
                lag_history.LAG_PARAMS,
            ),
            "/api/v1/services": _get(
                "Service instances and their last heartbeat",
                "Every instance with a heartbeat in Redis; one that missed 3 heartbeats is `down`.",
                "Services",
            ),
            "/api/v1/gateway-token": {
                "get": {
                    "summary": "A short-lived gateway token for the dashboard",
                    "description": "Signed with `BRIDGE_JWT_SECRET`; topics `audit_logs` and "
                    "`alerts` only; lives `BRIDGE_METRICS_GATEWAY_TOKEN_TTL` seconds (300 by "
                    "default, at most 600) and never beyond the ops token or session it was "
                    "asked with. The dashboard page asks again before it runs out.",
                    "parameters": [],
                    "responses": {
                        "200": _json("OK", "GatewayToken"),
                        **_REFUSALS,
                        "404": _json(
                            "No `BRIDGE_JWT_SECRET` (only with `BRIDGE_METRICS_AUTH=disabled`)",
                            "Error",
                        ),
                        "422": _json(
                            "A query parameter was given (none are taken)", "InvalidParameter"
                        ),
                    },
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "opsToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "opsSession": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "bridge_ops_session",
                },
            },
        },
    }
