"""A model card rendered for people: Markdown, or a self-contained HTML page.

Both come from the same outline (:func:`outline`: titled sections of facts and tables), so the
two formats always say the same thing. HTML escapes every value; Markdown escapes table cells'
pipes and line breaks. A missing figure prints as ``–``.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from edgefleet.cards import ModelCard

__all__ = ["Section", "outline", "to_html", "to_markdown"]

_NONE = "–"


@dataclass
class Section:
    """One titled part of a card: ``facts`` (label, value) and ``tables`` (columns, rows)."""

    title: str
    facts: list[tuple[str, Any]] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[Any]]]] = field(default_factory=list)
    text: str = ""


def _cell(value: Any) -> str:
    if value is None or value == "":
        return _NONE
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)
    if hasattr(value, "isoformat"):
        return str(value.isoformat(timespec="seconds"))
    return str(value)


def _lineage(card: ModelCard) -> Section:
    lin = card.lineage
    sec = Section("Lineage", facts=[
        ("kind", lin.kind), ("parent version", lin.parent_version),
        ("training data", lin.training_data_ref), ("published by", lin.created_by),
        ("published at", lin.created_at),
    ])
    run = lin.federated
    if run is not None:
        sec.facts += [
            ("federated run", run.run), ("round", run.round), ("strategy", run.strategy),
            ("participants this round", run.participants_this_round),
            ("participations over the run", run.participations),
            ("distinct participants", run.distinct_participants),
            ("run started by", run.started_by), ("run started at", run.started_at),
            ("run outcome", run.ended), ("triggering fleet drift", run.trigger),
            ("this round's drift summary", run.round_drift),
        ]
        sec.tables.append((["version", "round", "clients", "holdout accuracy"],
                           [[r.version, r.round, r.clients, r.holdout_accuracy]
                            for r in run.rounds]))
    return sec


def _evaluation(card: ModelCard) -> Section:
    ev = card.evaluation
    sec = Section("Evaluation", facts=[(f"holdout {k}", v) for k, v in sorted(ev.holdout.items())])
    sec.facts += [(k, v) for k, v in sorted(ev.metrics.items())]
    sec.tables.append((
        ["version", "devices", "labelled", "correct", "device accuracy", "feedback labelled",
         "feedback accuracy"],
        [[d.version, d.devices, d.labelled, d.correct, d.accuracy, d.feedback_labelled,
          d.feedback_accuracy] for d in ev.devices],
    ))
    sec.tables.append((
        ["class", "training examples", "device labelled", "device accuracy",
         "device predictions", "REST predictions", "REST labelled", "REST accuracy"],
        [[c.label, c.training_examples, c.device_labelled, c.device_accuracy,
          c.device_predictions, c.rest_predictions, c.rest_labelled, c.rest_accuracy]
         for c in ev.per_class],
    ))
    return sec


def _promotion(card: ModelCard) -> Section:
    pro = card.promotion
    sec = Section("Promotion", facts=[("in production since", pro.production_since)])
    sec.tables.append((
        ["rollout", "strategy", "state", "started by", "approved by", "promoted by", "finished"],
        [[r.id, r.strategy, r.state, r.created_by, ", ".join(r.approved_by) or None,
          r.promoted_by, r.finished_at] for r in pro.rollouts],
    ))
    sec.tables.append((
        ["alias", "at", "by", "reason", "rollout %"],
        [[m.get("alias"), m.get("at"), m.get("actor"), m.get("reason"),
          m.get("rollout_percent")] for m in pro.alias_moves],
    ))
    return sec


def outline(card: ModelCard) -> list[Section]:
    """The card's sections, in reading order."""
    use, plan = card.intended_use, card.plan
    return [
        Section("Intended use", facts=[
            ("task", use.task), ("labels", ", ".join(use.labels)), ("features", use.n_features),
        ], text=use.description),
        Section("Plan", facts=[
            ("architecture", plan.architecture), ("parameters", plan.parameters),
            ("plan bytes", plan.plan_bytes), ("weights bytes", plan.weights_bytes),
            ("plan sha256", plan.plan_sha256), ("signed by key", plan.signed_by),
        ]),
        _lineage(card),
        _evaluation(card),
        Section("Drift reference", facts=list((card.drift_reference or {}).items())),
        _promotion(card),
        Section("Known limitations", facts=[
            ("written by", card.limitations_by), ("at", card.limitations_at),
        ], text=card.limitations or "None entered."),
    ]


def _md_cell(value: Any) -> str:
    return _cell(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(card: ModelCard) -> str:
    """The card as a Markdown document."""
    lines = [f"# Model card: {card.model} v{card.version}", "",
             f"Status **{card.status}**; generated {_cell(card.generated_at)}.", ""]
    for sec in outline(card):
        lines += [f"## {sec.title}", ""]
        if sec.text:
            lines += [sec.text, ""]
        lines += [f"- **{label}**: {_md_cell(value)}" for label, value in sec.facts]
        for columns, rows in sec.tables:
            if not rows:
                continue
            lines += ["", "| " + " | ".join(columns) + " |",
                      "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def to_html(card: ModelCard) -> str:
    """The card as one HTML page (no scripts, no external resources)."""
    e = html.escape
    title = f"Model card: {card.model} v{card.version}"
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title>",
           "<style>body{font:14px system-ui,sans-serif;max-width:60rem;margin:2rem auto}"
           "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;"
           "padding:.2rem .5rem;text-align:left}dt{font-weight:600}</style></head><body>",
           f"<h1>{e(title)}</h1>",
           f"<p>Status <strong>{e(card.status)}</strong>; generated "
           f"{e(_cell(card.generated_at))}.</p>"]
    for sec in outline(card):
        out.append(f"<section><h2>{e(sec.title)}</h2>")
        if sec.text:
            out.append(f"<p>{e(sec.text)}</p>")
        if sec.facts:
            out.append("<dl>" + "".join(f"<dt>{e(label)}</dt><dd>{e(_cell(value))}</dd>"
                                        for label, value in sec.facts) + "</dl>")
        for columns, rows in sec.tables:
            if not rows:
                continue
            head = "".join(f"<th>{e(c)}</th>" for c in columns)
            body = "".join("<tr>" + "".join(f"<td>{e(_cell(v))}</td>" for v in row) + "</tr>"
                           for row in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)
