"""``engine preview``: what one customer would receive for one step of a campaign, rendered by the pass's own stages.

Nothing here renders on its own. The message comes from the machinery a pass uses:

- the plan (``Reconciler.due`` restricted to the customer) for the due row of that step, its variant and
  channel; when the customer is not due at the instant, their newest trigger instance (``due.explain_query``,
  the trigger kind's ``explain_instance``), with the reason it is not due for the caller to show;
- the render stage (``run.render.render``: the trigger's record and items, the product lists and promotions
  the template declares, the unsubscribe link, the channel's document by ``channels.with_document``).

Must not claim, record or send: no ledger write, no coupon code claimed (a coupon step shows
``PREVIEW_CODE``), no segment entries recorded, no channel session opened.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from engine import channel_kinds
from engine.channel_kinds.declaration import present
from engine.channels import OutgoingMessage
from engine.clock import format_instant
from engine.errors import EngineError
from engine.logs import REDACTED, redact
from engine.model import Campaign, Step
from engine.run.contacts import attach_contacts
from engine.run.messages import DueMessage, PassReport
from engine.run.ledger_state import warehouse_with_state
from engine.run.reconcile import Reconciler
from engine.run.render import render
from engine.run.sources import SourceRows
from engine.spec.code_secret import code_secrets
from engine.sql.compile import render_sql
from engine.sql.due import explain_query
from engine.sql.shipping import state_needs
from engine.sql.triggers.registry import kind_of
from engine.decide import customer_zone
from engine.state.ledger import message_key
from engine.templating.render import Renderer
from engine.tools.customer import find_customer

#: What a coupon step shows instead of a code: a preview never claims one.
PREVIEW_CODE = "PREVIEW-CODE"
#: How a document that is a PDF (a letter's, engine.channels.letter_pdf) begins: the kinds declare no document
#: type, and the bytes themselves are what ``--out`` writes.
PDF_MAGIC = b"%PDF-"


class PreviewError(EngineError):
    pass


@dataclass
class Preview:
    """The rendered message (``message.document``: the exact bytes its transport hands over) and,
    when the customer is not due at the instant, why (``not_due``)."""

    message: OutgoingMessage
    due: DueMessage
    not_due: str | None = None

    def files(self) -> dict[str, bytes]:
        """The files ``--out`` writes, by name: message.eml/.html/.txt for an email, message.pdf for a
        letter, message.json for the kinds whose document is JSON."""
        kind = channel_kinds.kind(self.message.kind)
        document = self.message.document or b""
        if kind.rfc5322:
            files = {"message.eml": document, "message.txt": (self.message.text or "").encode()}
            if self.message.html:
                files["message.html"] = self.message.html.encode()
            return files
        if document.startswith(PDF_MAGIC):
            return {"message.pdf": document}
        return {"message.json": document}

    def summary(self) -> str:
        m, parts = self.message, self.message.parts
        to = redact(m.to)
        title = parts.get("subject") or parts.get("title")
        text = parts.get("text") or parts.get("body")
        lines = [f"{self.due.campaign} / {self.due.step} (variant {self.due.variant}) for customer {self.due.customer_id}, "
                 f"trigger {self.due.trigger_key}, due {format_instant(self.due.due_at)}",
                 f"kind: {m.kind} (channel {self.due.channel})",
                 f"to: {to if to != m.to else REDACTED}"]
        if title:
            lines.append(f"{'subject' if 'subject' in parts else 'title'}: {title}")
        if text:
            lines += ["", text.rstrip("\n")]
        elif not (self.message.document or b"").startswith(PDF_MAGIC):
            lines += ["", (self.message.document or b"").decode("utf-8", "replace")]
        else:
            lines += ["", f"(a PDF of {len(self.message.document)} bytes: --out DIR writes it)"]
        return "\n".join(lines)


def preview(reconciler: Reconciler, campaign_name: str, step_id: str, customer_id: str, now: datetime,
            variant_id: str | None = None) -> Preview:
    """Render what ``customer_id`` would receive for ``step_id`` of ``campaign_name`` at ``now``."""
    project, config = reconciler.project, reconciler.config
    campaign = _campaign(reconciler, campaign_name)
    step = _step(campaign, step_id)
    if variant_id is not None and variant_id not in [v.id for v in step.variants]:
        raise PreviewError(f"step {step.id} of campaign {campaign.name} has no variant '{variant_id}' "
                           f"(its variants: {', '.join(v.id for v in step.variants)})")
    customer = find_customer(reconciler, customer_id)
    customer["customer_id"] = str(customer["customer_id"])
    planned = [m for batch in reconciler.due(now, [campaign], customer_id=customer_id) for m in batch
               if m.step == step.id]
    sending = sorted((m for m in planned if m.action == "send"), key=lambda m: m.trigger_at, reverse=True)
    not_due = None
    if sending:
        due = sending[0]
    else:
        due, not_due = _newest_instance(reconciler, campaign, step, customer, now, planned)
    variant = step.variant(variant_id) if variant_id is not None else (
        step.variant(due.variant) if due.variant is not None else step.variants[0])
    due = replace(due, variant=variant.id, channel=variant.channel, action="send", reason=None, detail=None,
                  candidates=(variant.id,), customer=dict(due.customer))
    sources = SourceRows(reconciler.warehouse, config, reconciler.key_kinds)
    attach_contacts([due], config, sources, reconciler.ledger, {f"{campaign.name}:{step.id}:{variant.id}": variant.channel})
    kind = channel_kinds.kind(config.channels[variant.channel].kind)
    if not present(kind.address(due.customer)):
        raise PreviewError(f"customer {customer_id} has no {kind.contact_field} for the {kind.name} channel "
                           f"{variant.channel} of step {step.id}: nothing to preview (try --variant or another customer)")
    if step.discount_code is not None:
        due.code = PREVIEW_CODE  # never claimed: a preview hands out no code
    rendered = render([due], project, config, Renderer(project.templates_dir), code_secrets(config).signing,
                      sources, PassReport(now=now), now)
    if rendered.failures:
        [failure] = rendered.failures
        raise PreviewError(f"{campaign.name}/{step.id} for customer {customer_id} would not be sent: "
                           f"{failure.status} ({failure.reason})" + (f": {failure.detail}" if failure.detail else ""))
    [(_, message)] = rendered.messages
    return Preview(message, due, not_due)


def _campaign(reconciler: Reconciler, name: str) -> Campaign:
    try:
        return reconciler.project.campaign(name)
    except KeyError:
        known = ", ".join(sorted(c.name for c in reconciler.project.campaigns))
        raise PreviewError(f"no campaign named '{name}' in campaigns.d/ (campaigns: {known})") from None


def _step(campaign: Campaign, step_id: str) -> Step:
    try:
        return campaign.step(step_id)
    except KeyError:
        raise PreviewError(f"campaign {campaign.name} has no step '{step_id}' "
                           f"(its steps: {', '.join(s.id for s in campaign.steps)})") from None


def _newest_instance(reconciler: Reconciler, campaign: Campaign, step: Step, customer: dict, now: datetime,
                     planned: list[DueMessage]) -> tuple[DueMessage, str]:
    """The customer's newest trigger instance as a due row of ``step``, and why it is not due at ``now``."""
    config = reconciler.config
    with warehouse_with_state(reconciler.warehouse, reconciler.ledger, reconciler.ledger_shares_warehouse,
                              state_needs([campaign], config), config) as (session, state):
        query, _ = explain_query(campaign, config, now, customer["customer_id"], state=state)
        rows = [dict(r._mapping) for batch in session.stream(render_sql(query, config.dialect)) for r in batch]
    zone = customer_zone(customer.get("timezone"), config.default_timezone)
    instances = []
    for row in rows:
        key, trigger_at, due_at = kind_of(campaign.trigger).explain_instance(campaign.trigger, step, row, zone, now,
                                                                             config.stale_horizon)
        if key is not None and trigger_at is not None:
            instances.append((trigger_at, key, due_at or trigger_at))
    if not instances:
        raise PreviewError(f"customer {customer['customer_id']} has no {campaign.trigger.kind} trigger instance for "
                           f"campaign {campaign.name} at {format_instant(now)}: nothing to render "
                           f"(`engine explain {campaign.name} {customer['customer_id']}` says why)")
    trigger_at, key, due_at = max(instances)
    mkey = message_key(campaign.name, step.id, customer["customer_id"], key)
    decided = next((m for m in planned if m.key == mkey), None)
    recorded = reconciler.ledger.customer_messages(customer["customer_id"], ("message_key", "status"), campaign.name)
    status = next((r["status"] for r in recorded if r["message_key"] == mkey), None)
    if decided is not None:
        reason = f"{decided.action} {decided.reason}" + (f" ({decided.detail})" if decided.detail else "")
    elif status is not None:
        reason = f"already in the ledger ({status})"
    elif due_at > now:
        reason = f"due at {format_instant(due_at)}"
    else:
        reason = "not in the due set (an audience, a stop condition or freshness; `engine explain` says which)"
    first = step.variants[0]
    due = DueMessage(campaign.name, step.id, customer["customer_id"], key, trigger_at, due_at, first.channel,
                     customer, "send", variant=first.id, candidates=(first.id,))
    return due, reason


def write_files(result: Preview, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in result.files().items():
        path = directory / name
        path.write_bytes(content)
        written.append(path)
    return written
