"""studies/claims_table.py: every JSON claim lands in the README table; malformed claims are refused."""

import json

import pytest

from .study_loader import load_study

claims_table = load_study("claims_table.py")


def _claim(**overrides):
    claim = {"claim": "transfer rises with domain similarity", "seed_figure": "Fig 4.6: monotone per target",
             "ours": "rho 0.61 +- 0.05 (n=3)", "reproduced": "yes", "why": ""}
    claim.update(overrides)
    return claim


def _setup(tmp_path, studies):
    results = tmp_path / "results"
    results.mkdir()
    for name, payload in studies.items():
        (results / f"{name}.json").write_text(json.dumps(payload))
    readme = tmp_path / "README.md"
    readme.write_text(f"# Studies\nintro stays\n\n{claims_table.BEGIN}\nold table\n{claims_table.END}\n\nfooter stays\n")
    return str(results), str(readme)


def test_every_claim_becomes_a_row_and_the_rest_of_the_readme_is_kept(tmp_path):
    alpha = [_claim(), _claim(claim="pipe | in text", ours="0.20 +- 0.01 (n=3)", reproduced="no",
                              why="the synthetic set is too easy")]
    beta = [_claim(claim="granularity rises with relabelling", seed_figure="Fig 6.5", reproduced="partly",
                   why="one step of eight goes down")]
    results, readme = _setup(tmp_path, {"alpha": {"claims": alpha, "other": 1}, "beta": {"claims": beta},
                                        "no_claims_yet": {"records": [1, 2]}})
    (tmp_path / "results" / "beta.png").write_bytes(b"png")

    assert claims_table.update_readme(readme, results) is True
    text = open(readme).read()
    table = text.split(claims_table.BEGIN)[1].split(claims_table.END)[0]
    rows = [line for line in table.strip().splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 3  # 2 + 1 claims; the JSON without "claims" adds none
    assert "3 claims from 2 studies: reproduced yes 1, no 1, partly 1." in table
    for study, claim in [("alpha", c) for c in alpha] + [("beta", c) for c in beta]:
        row = next(r for r in rows if claim["claim"].replace("|", "\\|") in r)
        assert study in row
        for key in ("seed_figure", "ours"):
            assert claim[key] in row
        assert f"| {claim['reproduced']}" in row
        if claim["why"]:
            assert claim["why"] in row
    assert "[beta](results/beta.png)" in table and "[alpha]" not in table
    assert "no_claims_yet" not in table and "old table" not in text
    assert text.startswith("# Studies\nintro stays\n") and text.endswith("\n\nfooter stays\n")
    # Idempotent: a second run finds nothing to change, and --check agrees.
    assert claims_table.update_readme(readme, results) is False
    assert claims_table.main(["--results_dir", results, "--readme", readme, "--check"]) == 0


@pytest.mark.parametrize("claims, message", [
    ({"claim": "x"}, "must be a list"),
    (["just text"], "claims[0] must be an object"),
    ([{"claim": "a", "seed_figure": "b", "reproduced": "yes"}], "has no 'ours'"),
    ([_claim(ours="  ")], "claims[0]['ours'] must be a non-empty string"),
    ([_claim(), _claim(reproduced="mostly")], "claims[1][\"reproduced\"] must be one of"),
    ([_claim(reproduced="no", why="")], "gives no \"why\""),
    ([_claim(seed_figure=3.6)], "got 3.6"),
])
def test_a_malformed_claim_is_refused_naming_file_index_and_value(tmp_path, claims, message):
    results, readme = _setup(tmp_path, {"good": {"claims": [_claim()]}, "bad_study": {"claims": claims}})
    before = open(readme).read()
    with pytest.raises(claims_table.ClaimError) as err:
        claims_table.update_readme(readme, results)
    assert "bad_study.json" in str(err.value) and message in str(err.value)
    assert open(readme).read() == before  # nothing half-written
    assert claims_table.main(["--results_dir", results, "--readme", readme]) == 2


def test_missing_or_swapped_markers_are_refused(tmp_path):
    results, readme = _setup(tmp_path, {"good": {"claims": [_claim()]}})
    with open(readme, "w") as f:
        f.write(f"no markers here\n{claims_table.END}\n")
    with pytest.raises(claims_table.ClaimError, match="exactly once, found 0"):
        claims_table.update_readme(readme, results)
    with open(readme, "w") as f:
        f.write(f"{claims_table.END}\n{claims_table.BEGIN}\n")
    with pytest.raises(claims_table.ClaimError, match="end marker comes before"):
        claims_table.update_readme(readme, results)


def test_rewrite_claims_derives_from_the_stored_json_and_refuses_a_bad_derivation(tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"per_seed": [0.4, 0.6], "claims": []}))
    made = claims_table.rewrite_claims(str(path), lambda r: [_claim(ours=f"{sum(r['per_seed']) / 2:.2f} (n=2)")])
    stored = json.loads(path.read_text())
    assert stored["per_seed"] == [0.4, 0.6] and stored["claims"] == made and made[0]["ours"] == "0.50 (n=2)"
    with pytest.raises(claims_table.ClaimError, match="study.json: claims\\[0\\]\\[\"reproduced\"\\]"):
        claims_table.rewrite_claims(str(path), lambda r: [_claim(reproduced="maybe")])
    assert json.loads(path.read_text()) == stored  # refused before writing


def test_a_missing_or_claimless_results_dir_leaves_the_table_alone(tmp_path):
    results, readme = _setup(tmp_path, {"no_claims_yet": {"records": [1]}})
    before = open(readme).read()
    with pytest.raises(claims_table.ClaimError, match="refusing to empty the table"):
        claims_table.update_readme(readme, results)
    assert claims_table.main(["--results_dir", str(tmp_path / "nowhere"), "--readme", readme]) == 2
    assert open(readme).read() == before
