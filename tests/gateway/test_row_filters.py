"""Row-level access in-process: the token claim, the effective filter (token AND client),
admission, and what happens to events that carry no row."""

from __future__ import annotations

import time

import jwt
import pytest
from bridge_common.events import event_fragment, event_fragment_too_large, event_prefix
from bridge_gateway.access import admit, admit_presence
from bridge_gateway.auth import Authenticator, Principal
from bridge_gateway.errors import BadRequest, Forbidden, Unauthorized
from bridge_gateway.filters import RowFilter, narrow, token_filters
from bridge_gateway.hub import passes
from hypothesis import given
from hypothesis import strategies as st

SECRET = "unit-" + "x" * 40
TS = "2026-01-01T00:00:00+00:00"


def principal(filters: dict | None = None, topics: list[str] | None = None) -> Principal:  # type: ignore[type-arg]
    claims = {"sub": "u", "exp": int(time.time() + 60), "topics": topics or ["rows"]}
    if filters is not None:
        claims["filters"] = filters
    return Authenticator(SECRET).authenticate(jwt.encode(claims, SECRET, algorithm="HS256"))


def event(row: dict, op: str = "insert") -> bytes:  # type: ignore[type-arg]
    return event_prefix("rows") + b"1-0" + event_fragment(op, "k", row, TS)


# -- the claim ---------------------------------------------------------------------------------


def test_claim_compiles_to_bound_filters() -> None:
    p = principal({"rows": {"tenant": ["a", "b"], "region": "eu"}})
    flt = p.row_filter("rows")
    assert flt is not None and flt.bound
    assert flt.fields == {"tenant": frozenset({"a", "b"}), "region": frozenset({"eu"})}
    assert p.row_filter("other") is None  # no entry: the whole topic
    assert p.presence is False  # a row-filtered holder is never listed


@pytest.mark.parametrize(
    "claim",
    [
        "x",
        ["rows"],
        {"rows": "a"},
        {"rows": {}},
        {"rows": {"tenant": {"a": 1}}},
        {"rows": {"tenant": []}},
        {"rows": {f"f{i}": 1 for i in range(17)}},
        {"rows": {"tenant": list(range(101))}},
        {"bad topic": {"tenant": "a"}},
        {f"t{i}": {"tenant": "a"} for i in range(257)},
    ],
)
def test_malformed_claim_is_refused(claim: object) -> None:
    with pytest.raises(Unauthorized, match=r"^invalid token: 'filters'"):
        principal(claim)  # type: ignore[arg-type]


def test_no_claim_and_null_claim_mean_no_restriction() -> None:
    assert principal().filters == {}
    assert token_filters(None) == {}


# -- the effective filter ---------------------------------------------------------------------


def test_narrow_keeps_token_fields_and_adds_client_ones() -> None:
    token = RowFilter({"tenant": ["a", "b"]}, bound=True)
    eff = narrow(token, RowFilter({"tenant": "a", "kind": "x"}))
    assert eff is not None and eff.bound
    assert eff.fields == {"tenant": frozenset({"a"}), "kind": frozenset({"x"})}
    assert narrow(token, None) is token
    client = RowFilter({"kind": "x"})
    assert narrow(None, client) is client


def test_widening_is_forbidden_not_emptied() -> None:
    token = RowFilter({"tenant": ["a", "b"]}, bound=True)
    with pytest.raises(Forbidden, match="beyond the token's filter"):
        narrow(token, RowFilter({"tenant": ["b", "c"]}))


def test_numbers_in_the_token_match_query_string_values() -> None:
    # `?tenant=5` (a string) narrows a token claim of the number 5
    eff = narrow(RowFilter({"tenant": [5, 6]}, bound=True), RowFilter({"tenant": "5"}))
    assert eff is not None and eff.matches({"tenant": 5}) and not eff.matches({"tenant": 6})


def test_bound_and_unbound_filters_never_share_a_group() -> None:
    assert RowFilter({"tenant": "a"}).key != RowFilter({"tenant": "a"}, bound=True).key
    assert RowFilter({"tenant": "a"}, bound=True).key == RowFilter({"tenant": "a"}, bound=True).key


values = st.sets(st.sampled_from("abcdef"), min_size=1, max_size=4)


@given(token=values, client=values, row=st.sampled_from("abcdefg"))
def test_effective_filter_is_the_conjunction(token: set[str], client: set[str], row: str) -> None:
    t = RowFilter({"tenant": sorted(token)}, bound=True)
    c = RowFilter({"tenant": sorted(client)})
    if client <= token:
        eff = narrow(t, c)
        assert eff is not None
        assert eff.matches({"tenant": row}) == (row in token and row in client)
    else:
        with pytest.raises(Forbidden):
            narrow(t, c)


# -- admission -----------------------------------------------------------------------------------


def test_admit_is_the_one_check() -> None:
    p = principal({"rows": {"tenant": "a"}})
    eff = admit(p, "rows", {"kind": "x"})
    assert eff is not None and eff.fields == {
        "tenant": frozenset({"a"}),
        "kind": frozenset({"x"}),
    }
    with pytest.raises(Forbidden) as err:
        admit(p, "rows", {"tenant": "b"})
    assert err.value.topic == "rows"
    with pytest.raises(Forbidden):
        admit(p, "elsewhere")
    with pytest.raises(BadRequest):
        admit(p, "no such topic")
    with pytest.raises(Forbidden, match="presence"):
        admit_presence(p, "rows")
    admit_presence(principal(), "rows")  # no row filter: presence as before


# -- events without a row --------------------------------------------------------------------------


def test_rowless_events() -> None:
    bound = RowFilter({"tenant": "a"}, bound=True)
    client = RowFilter({"tenant": "a"})
    too_large = event_prefix("rows") + b"1-0" + event_fragment_too_large("update", "k2", 10**7, TS)
    # the key may be another tenant's: never to a token-bound filter
    assert not passes(bound, too_large)
    # a client's own filter is told (no silent gap), as before
    assert passes(client, too_large)
    truncate = event({}, op="truncate")
    assert passes(bound, truncate) and passes(client, truncate)
    assert passes(bound, event({"tenant": "a"})) and not passes(bound, event({"tenant": "b"}))
