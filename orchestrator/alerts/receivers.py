"""Delivering one notification: a webhook POST (aimsnap's JSON, or Alertmanager's list of alerts)
or an e-mail over SMTP (STARTTLS, login from files). Each raises :class:`DeliveryError` with one
line on failure; the engine retries."""

from __future__ import annotations

import json
import smtplib
import ssl
import urllib.error
import urllib.request
from email.message import EmailMessage

from policies.durations import parse_duration
from policies.model import Receiver

from engine.net.secretfile import read_secret

SCHEMA_VERSION = 1


class DeliveryError(Exception):
    pass


def payload(n: dict) -> dict:
    """aimsnap's webhook body (README, "Alerts"): one notification, ``status`` firing or resolved."""
    return {"version": SCHEMA_VERSION, **n}


def alertmanager(n: dict) -> list[dict]:
    """The same as Alertmanager's ``POST /api/v2/alerts`` takes it (a resolved alert has endsAt)."""
    labels = {"alertname": n["rule"], "source": "aimsnap", "key": n["key"],
              **{k: n[k] for k in ("policy", "node", "aim_set") if n.get(k)}}
    alert = {"labels": labels, "annotations": {"summary": n["reason"],
                                               **{k: str(v) for k, v in (n.get("figures") or {}).items()}},
             "startsAt": n["fired_at"], "generatorURL": ""}
    if n["status"] == "resolved":
        alert["endsAt"] = n["resolved_at"]
    return [alert]


def send(receiver: Receiver, n: dict) -> None:
    if receiver.kind == "webhook":
        _webhook(receiver.spec, n)
    else:
        _email(receiver.spec, n)


def _timeout(spec: dict) -> float:
    return parse_duration(spec.get("timeout", "10s"))


def _webhook(spec: dict, n: dict) -> None:
    body = alertmanager(n) if spec.get("format") == "alertmanager" else payload(n)
    req = urllib.request.Request(spec["url"], data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "aimsnap"})
    if spec.get("token_file"):
        req.add_header("Authorization", f"Bearer {read_secret(spec['token_file'], 'webhook token file').strip()}")
    try:
        with urllib.request.urlopen(req, timeout=_timeout(spec)) as resp:
            resp.read()
    except urllib.error.HTTPError as e:
        raise DeliveryError(f"the webhook answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DeliveryError(f"the webhook is unreachable: {getattr(e, 'reason', None) or e}") from None


def subject(n: dict) -> str:
    return f"[aimsnap] {n['status'].upper()} {n['rule']}: {n.get('policy') or n.get('aim_set') or n['key']}"


def _email(spec: dict, n: dict) -> None:
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = subject(n), spec["from"], ", ".join(spec["to"])
    lines = [n["reason"], "", f"status:   {n['status']}", f"rule:     {n['rule']}", f"fired at: {n['fired_at']}"]
    if n.get("resolved_at"):
        lines.append(f"resolved: {n['resolved_at']}")
    lines += [f"{k + ':':<9} {n[k]}" for k in ("policy", "node", "aim_set") if n.get(k)]
    lines += [f"{k}: {v}" for k, v in (n.get("figures") or {}).items()]
    msg.set_content("\n".join(lines) + "\n")
    host, _, port = spec["smtp"].rpartition(":")
    try:
        with smtplib.SMTP(host, int(port), timeout=_timeout(spec)) as smtp:
            if spec.get("starttls"):
                smtp.starttls(context=ssl.create_default_context())
            if spec.get("user_file"):
                smtp.login(read_secret(spec["user_file"], "SMTP user file").strip(),
                           read_secret(spec["password_file"], "SMTP password file").strip())
            smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as e:
        raise DeliveryError(f"the SMTP server {spec['smtp']} failed: {e}") from None
