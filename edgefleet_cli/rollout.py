"""``edgefleet rollout``: start, watch, approve and abort guarded rollouts over the REST API.

Commands: ``start MODEL [CANDIDATE] [options]``, ``status [ID] [--model M]``,
``approve ID``, ``abort ID`` and ``history ID`` (the timeline with the evidence behind each
transition). Each prints tables, or the server's JSON with ``--json``. Server and admin key as
for ``edgefleet registry`` (``--url`` / ``$EDGEFLEET_URL``, ``$EDGEFLEET_ADMIN_KEY``). A refusal
prints the server's message and exits 1, as does a server that cannot be reached (one line, from
:mod:`edgefleet_cli.remote`).

Only Typer and the standard library are imported at module level; httpx inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgefleet_cli import registry as _registry
from edgefleet_cli.registry import Json, Url, table

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Guarded rollouts: canary, waves, blue-green, A/B, shadow.")

Strategy = Annotated[str, typer.Option(help="canary | waves | blue_green | ab | shadow")]


def _post(url: str | None, path: str, body: dict[str, Any]) -> Any:
    return _registry._call(url, "POST", path, body=body)


_GUARD_FORM = "kind[:margin[:min_samples[:statuses]]]"


def _guard(text: str) -> dict[str, Any]:
    """``kind[:margin[:min_samples[:statuses]]]`` → a guard; an empty field keeps the server's
    default (``error_rate:::server``: only 5xx count, the default margin and sample)."""
    kind, *rest = text.split(":")
    if len(rest) > 3:
        raise typer.BadParameter(f"guard {text!r}: write {_GUARD_FORM}")
    out: dict[str, Any] = {"kind": kind}
    try:
        if rest and rest[0]:
            out["margin"] = float(rest[0])
        if len(rest) > 1 and rest[1]:
            out["min_samples"] = int(rest[1])
    except ValueError:
        raise typer.BadParameter(f"guard {text!r}: write {_GUARD_FORM}") from None
    if len(rest) > 2 and rest[2]:
        out["statuses"] = rest[2]  # the server says which values it takes
    return out


def _variant(text: str) -> dict[str, Any]:
    """``name=version[:weight]`` → an A/B variant."""
    name, sep, rest = text.partition("=")
    version, _, weight = rest.partition(":")
    try:
        if not sep:
            raise ValueError
        return {"name": name, "version": int(version), **({"weight": float(weight)}
                                                            if weight else {})}
    except ValueError:
        raise typer.BadParameter(f"variant {text!r}: write name=version[:weight]") from None


def _wave(text: str) -> dict[str, str] | None:
    """``site=a,zone=x`` → a label selector (``*``: every device)."""
    if text.strip() == "*":
        return None
    pairs = [p.partition("=") for p in text.split(",") if p]
    if any(not sep for _, sep, _ in pairs):
        raise typer.BadParameter(f"wave {text!r}: write key=value[,key=value] or *")
    return {k.strip(): v.strip() for k, _, v in pairs}


def _steps(strategy: str, percents: str | None, waves: list[str], bake_s: float | None,
           timeout_s: float | None) -> list[dict[str, Any]] | None:
    timing = {**({"bake_s": bake_s} if bake_s is not None else {}),
              **({"timeout_s": timeout_s} if timeout_s is not None else {})}
    if strategy == "waves":
        return [{"labels": _wave(w), **timing} for w in waves] or None
    if percents:
        try:
            return [{"percent": float(p), **timing} for p in percents.split(",")]
        except ValueError:
            raise typer.BadParameter(f"--steps {percents!r}: write e.g. 5,25,50,100") from None
    if timing and strategy in ("canary", "blue_green"):
        n = 2 if strategy == "blue_green" else 4
        pcts = [None] * 2 if strategy == "blue_green" else [5, 25, 50, 100]
        return [{**({"percent": p} if p else {}), **timing} for p in pcts[:n]]
    return None


@app.command()
def start(
    model: str,
    candidate: Annotated[int | None, typer.Argument(help="the candidate version")] = None,
    strategy: Strategy = "canary",
    steps: Annotated[str | None, typer.Option(help="canary shares, e.g. 5,25,50,100")] = None,
    wave: Annotated[list[str], typer.Option(help="waves: a label selector per wave "
                                                 "(site=a; * = all), repeatable")] = [],  # noqa: B006
    bake_s: Annotated[float | None, typer.Option(min=0)] = None,
    timeout_s: Annotated[float | None, typer.Option(min=0)] = None,
    guard: Annotated[list[str], typer.Option(help=f"{_GUARD_FORM} (statuses: all or "
                                                  "server, for error_rate), repeatable")
                     ] = [],  # noqa: B006
    variant: Annotated[list[str], typer.Option(help="ab: name=version[:weight]")] = [],  # noqa: B006
    horizon_s: Annotated[float | None, typer.Option(min=0)] = None,
    shadow_rate: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    approval: Annotated[bool, typer.Option(help="wait for approval before promoting")] = False,
    spec: Annotated[Path | None, typer.Option(help="a RolloutCreate JSON file (the other "
                                                   "options override it)")] = None,
    reason: Annotated[str, typer.Option()] = "",
    url: Url = None, as_json: Json = False,
) -> None:
    """Start a rollout of CANDIDATE of MODEL."""
    body: dict[str, Any] = json.loads(spec.read_text()) if spec else {}
    body.update(model=model, strategy=body.get("strategy", strategy)
                if strategy == "canary" else strategy)
    if candidate is not None:
        body["candidate"] = candidate
    built = _steps(body["strategy"], steps, wave, bake_s, timeout_s)
    extras = {"steps": built, "guards": [_guard(g) for g in guard] or None,
              "variants": [_variant(v) for v in variant] or None, "horizon_s": horizon_s,
              "shadow_rate": shadow_rate, "approval": approval or None, "reason": reason or None}
    body.update({k: v for k, v in extras.items() if v is not None})
    data = _post(url, "/api/v1/rollouts", body)
    _print_rollout(data, as_json)


def _print_rollout(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(table([data], ["id", "model", "strategy", "candidate", "baseline", "state",
                              "step", "awaiting", "step_started_at"]))
    steps = [{"step": i + 1, **s} for i, s in enumerate(data.get("steps") or [])]
    if steps:
        typer.echo("\nsteps")
        typer.echo(table(steps, ["step", "percent", "labels", "bake_s", "timeout_s", "approval"]))
    decision = data.get("last_decision") or {}
    if decision.get("guards"):
        typer.echo(f"\nlast decision: {decision.get('verdict')} at {decision.get('at')}")
        typer.echo(table(decision["guards"], ["kind", "decision", "candidate", "baseline",
                                              "candidate_n", "baseline_n", "reason"]))
    if decision.get("ab"):
        ab = decision["ab"]
        typer.echo(f"\nA/B: {ab['test']}; min {ab['min_samples']} labelled per variant; "
                   f"{ab['reason'] or 'collecting'}")
        typer.echo(table(ab["arms"], ["name", "version", "n", "correct", "accuracy"]))
        if ab.get("comparisons"):
            typer.echo(table(ab["comparisons"], ["control", "variant", "z", "p_value",
                                                 "significant"]))


@app.command()
def status(
    rollout_id: Annotated[int | None, typer.Argument(help="one rollout (default: list)")] = None,
    model: Annotated[str | None, typer.Option()] = None,
    all_: Annotated[bool, typer.Option("--all", help="also ended rollouts")] = False,
    url: Url = None, as_json: Json = False,
) -> None:
    """One rollout with its last decision, or the active rollouts."""
    if rollout_id is not None:
        _print_rollout(_registry._get(url, f"/api/v1/rollouts/{rollout_id}"), as_json)
        return
    data = _registry._get(url, "/api/v1/rollouts",
                          {"model": model, "active": None if all_ else "true"})
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(table(data["items"], ["id", "model", "strategy", "candidate", "baseline",
                                     "state", "step", "awaiting", "updated_at"]))


def _evidence_cell(ev: dict[str, Any] | None) -> str:
    """The guards of an event as ``kind=decision`` (and the A/B winner), for the table."""
    if not ev:
        return ""
    parts = [f"{g['kind']}={g['decision']}" for g in ev.get("guards") or []]
    if ev.get("ab"):
        parts.append(f"ab winner={ev['ab'].get('winner')}")
    return " ".join(parts)


@app.command()
def history(rollout_id: int, url: Url = None, as_json: Json = False) -> None:
    """The timeline of a rollout: every transition and the evidence behind it."""
    data = _registry._get(url, f"/api/v1/rollouts/{rollout_id}/history")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    rows = [{**e, "guards": _evidence_cell(e.get("evidence")), "step": e["step"] + 1}
            for e in data]
    typer.echo(table(rows, ["at", "kind", "from_state", "to_state", "step", "actor", "guards",
                            "message"]))


@app.command()
def approve(rollout_id: int,
            variant: Annotated[str | None, typer.Option(help="ab: the variant to promote")] = None,
            reason: Annotated[str, typer.Option()] = "",
            url: Url = None, as_json: Json = False) -> None:
    """Release the step or the promotion a rollout awaits."""
    body = {"reason": reason, **({"variant": variant} if variant else {})}
    _print_rollout(_post(url, f"/api/v1/rollouts/{rollout_id}/approve", body), as_json)


@app.command()
def abort(rollout_id: int, reason: Annotated[str, typer.Option()] = "aborted by an operator",
          url: Url = None, as_json: Json = False) -> None:
    """Abort an active rollout: every device and caller back on the baseline."""
    _print_rollout(_post(url, f"/api/v1/rollouts/{rollout_id}/abort", {"reason": reason}),
                   as_json)
