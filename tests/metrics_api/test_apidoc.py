"""docs/api.md's metrics section is what /openapi.json says (regenerate with
`uv run python -m bridge_metrics_api.apidoc --write docs/api.md`)."""

from __future__ import annotations

from pathlib import Path

from bridge_metrics_api import apidoc

from tests.support.ops import ops_get

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_docs_api_md_matches_the_served_openapi(api) -> None:
    served = ops_get(api.url + "/openapi.json", timeout=10).json()
    in_docs = apidoc.current(DOC.read_text())
    assert in_docs is not None, "docs/api.md lacks the <!-- openapi:metrics --> markers"
    assert in_docs == apidoc.render(served), "docs/api.md is stale: run apidoc --write"


def test_check_flag_reports_a_stale_doc(tmp_path: Path) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(f"# API\n\n{apidoc.START}\nold text\n{apidoc.END}\n")
    assert apidoc.main(["--check", str(stale)]) == 1
    assert apidoc.main(["--write", str(stale)]) == 0
    assert apidoc.main(["--check", str(stale)]) == 0
    assert stale.read_text().startswith("# API\n\n" + apidoc.START)
