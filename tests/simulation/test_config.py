"""The experiment config: TOML and the pydantic object, errors with paths, sweeps, examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulation.config import Experiment, expand_sweep, load_experiment, parse_experiment
from simulation.errors import ConfigError

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))


def test_toml_and_python_are_the_same_object(tmp_path: Path) -> None:
    f = tmp_path / "e.toml"
    f.write_text('name = "x"\nrounds = 3\n[clients]\ncount = 20\nfraction = 0.25\n'
                 '[data]\nsource = "npz"\npath = "d.npz"\n')
    exp = load_experiment(f)
    assert exp == Experiment(name="x", rounds=3, clients={"count": 20, "fraction": 0.25},
                             data={"source": "npz", "path": str(tmp_path / "d.npz")})
    assert exp.clients.target() == 5


def test_unknown_and_bad_keys_are_refused_with_their_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"clients\.cuont"):
        parse_experiment({"clients": {"cuont": 3}})
    with pytest.raises(ConfigError, match=r"training\.batch_rule"):
        parse_experiment({"training": {"batch_rule": "pad"}})
    with pytest.raises(ConfigError, match=r"needs data\.path"):
        parse_experiment({"data": {"source": "csv"}})
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_experiment(bad)


def test_sweep_expands_every_combination() -> None:
    exp = parse_experiment({"name": "s", "drift": [{"kind": "noise"}],
                            "sweep": {"selection.policy": ["uniform", "drift"],
                                      "drift.0.fraction": [0.1, 0.3], "seed": [0, 1]}})
    points = expand_sweep(exp)
    assert len(points) == 8
    assert {(e.selection.policy, e.drift[0].fraction, e.seed) for _, e in points} == {
        (p, f, s) for p in ("uniform", "drift") for f in (0.1, 0.3) for s in (0, 1)}
    assert len({e.out_dir() for _, e in points}) == 8
    with pytest.raises(ConfigError):
        expand_sweep(parse_experiment({"sweep": {"clients.count": [1]}}))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_parse(path: Path) -> None:
    exp = load_experiment(path)
    assert expand_sweep(exp)


def test_selection_query_keys_reach_the_round_settings() -> None:
    from simulation.server import round_settings

    exp = parse_experiment({"selection": {"query_max_age": 4, "query_share": 0.25}})
    settings = round_settings(exp, "m")
    assert (settings.query_max_age, settings.query_share) == (4, 0.25)
    assert round_settings(parse_experiment({}), "m").query_share == 0.1
    with pytest.raises(ConfigError, match=r"selection\.query_share"):
        parse_experiment({"selection": {"query_share": 1.5}})


def test_more_per_round_than_clients_is_refused_by_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgefleet_cli.main import app

    path = tmp_path / "typo.toml"
    path.write_text('name = "typo"\nrounds = 1\n[clients]\ncount = 10\nper_round = 50\n')
    r = CliRunner().invoke(app, ["sim", "run", str(path), "--no-progress",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 1, r.output
    assert "clients: per_round 50 > count 10" in r.output, r.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="per_round 12 > count 6"):
        parse_experiment({"clients": {"count": 6, "per_round": 12}})
    assert parse_experiment({"clients": {"count": 6, "per_round": 6}}).clients.target() == 6


def test_cli_help_shows_its_words_without_markup() -> None:
    from typer.testing import CliRunner

    from edgefleet_cli.main import app

    for args in (["sim", "run", "--help"], ["sim", "fleet", "--help"],
                 ["server", "migrate", "--help"], ["server", "runner", "--help"]):
        out = CliRunner().invoke(app, args, env={"COLUMNS": "200"}).output
        assert "``" not in out, (args, out)
    run_help = CliRunner().invoke(app, ["sim", "run", "--help"], env={"COLUMNS": "200"}).output
    assert "A sweep table in the file runs every combination" in run_help
