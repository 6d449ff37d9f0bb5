"""Absolute links that leave the page: in e-mails, and the addresses Stripe sends a buyer
back to."""

from __future__ import annotations

from flask import current_app, url_for


def absolute(endpoint: str, **values) -> str:
    """``endpoint``'s URL on ``DICOMSTL_PUBLIC_URL`` when set (a forged Host header cannot
    redirect a reset link), else on the address this request came to."""
    base = current_app.config["SETTINGS"].public_url.rstrip("/")
    if base:
        return base + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)
