"""The privacy page (every retention window, made from the settings and rules the scheduler
enforces), the cookie page, and the contact form."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from dicomstl import inquiries
from dicomstl.accounts import AccountError
from dicomstl.inquiries import InquiryError
from dicomstl.retention_policy import promises
from dicomstl.settings import Settings
from web import login
from web.forms import ContactForm
from web.ip_log import logged_as

privacy = Blueprint("privacy", __name__)


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


@privacy.get("/privacy")
def policy():
    return render_template("privacy.html", promises=promises(_settings()),
                           billing=_settings().billing_enabled)


@privacy.get("/cookies")
def cookies():
    return render_template("cookies.html",
                           lifetime_days=current_app.permanent_session_lifetime.days)


@privacy.route("/contact", methods=["GET", "POST"])
@logged_as("account", methods=("POST",))
def contact():
    me = login.account()
    form = ContactForm(email=me.email if me else None)
    if form.validate_on_submit():
        try:
            inquiries.record(_settings().database_url, form.email.data, form.message.data,
                             me.id if me else None)
        except AccountError as exc:
            form.email.errors.append(str(exc))
        except InquiryError as exc:
            form.message.errors.append(str(exc))
        else:
            return render_template("message.html", title="Thank you", message=(
                "Your message has arrived; we answer by e-mail. It is deleted 12 months "
                "after it arrived (see the privacy page)."))
    return render_template("contact.html", form=form), 400 if form.errors else 200
