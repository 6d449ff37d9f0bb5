"""Accounts in the browser: register, confirm the address, log in and out, reset the
password; the account page (plan, credits, usage, API keys, jobs, the organisation's
members) and its actions; erasure.

Every answer that could tell whether an address has an account (registration, login,
password reset, a new confirmation link) reads the same either way; the e-mail then says
what applies.
"""

from __future__ import annotations

import datetime as dt

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import login_required

from dicomstl import accounts as core
from dicomstl import apikeys, credits, jobs, mail, organisations, privacy, tokens
from dicomstl.accounts import AccountError
from dicomstl.db import utcnow
from dicomstl.job_view import public_view
from dicomstl.organisations import MembershipError
from dicomstl.retention_policy import INVOICE_KEEP, result_kept
from dicomstl.settings import Settings
from web import login
from web.errors import answer
from web.forms import (
    ActionForm,
    ChangePasswordForm,
    ConfirmPasswordForm,
    EmailForm,
    InviteForm,
    LoginForm,
    NameForm,
    NewPasswordForm,
    RegisterForm,
)
from web.ip_log import logged_as
from web.links import absolute as link

accounts = Blueprint("accounts", __name__)
JOBS_SHOWN = 50
LOGIN_FAILED = ("The e-mail or the password is wrong. After repeated failures an account is "
                "locked for a while, and its owner is told by e-mail.")


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def _mail(to: str, subject: str, body: str) -> None:
    mail.send_later(_settings(), to, subject, body + "\n\n-- \ndicomstl\n")


def _safe_next(target: str | None) -> str:
    """A local path to go on to after login, never another site."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return url_for("accounts.account")


# Registration and confirmation ---------------------------------------------------------------

@accounts.route("/register", methods=["GET", "POST"])
@logged_as("account", methods=("POST",))
def register():
    form = RegisterForm()
    if form.validate_on_submit():
        try:
            user, created = core.register(_settings().database_url, form.email.data,
                                          form.password.data)
        except AccountError as exc:
            form.email.errors.append(str(exc))
        else:
            if created:
                _send_confirmation(user)
            else:
                _mail(user.email, "Someone tried to register with your address",
                      "Someone (perhaps you) tried to make a dicomstl account with this "
                      "address, which has one already. Log in: "
                      f"{link('accounts.login')}\nForgot the password? Reset it: "
                      f"{link('accounts.reset_request')}\nIf it was not you, you need do "
                      "nothing.")
            return render_template("message.html", title="Check your e-mail", message=(
                "We have sent a message to that address. Follow its link to confirm the "
                "address, then log in. The link is valid for 48 hours."))
    return render_template("register.html", form=form), 400 if form.errors else 200


def _send_confirmation(user) -> None:
    token = tokens.make(_settings().secret_key, "confirm", {"u": user.id, "e": user.email})
    _mail(user.email, "Confirm your e-mail address for dicomstl",
          f"Confirm this address to finish making your dicomstl account:\n\n"
          f"{link('accounts.confirm', token=token)}\n\nThe link is valid for 48 hours. If "
          "you did not ask for an account, ignore this message: nothing happens.")


def _token_user(purpose: str, token: str, field: str):
    """The account a valid token for ``purpose`` names, with the token's ``field``; (None,
    None) for a forged, expired or damaged token, or a gone account."""
    try:
        payload = tokens.read(_settings().secret_key, purpose, token)
        return core.get_user(_settings().database_url, int(payload["u"])), payload.get(field)
    except (tokens.BadToken, KeyError, TypeError, ValueError):
        return None, None


@accounts.get("/confirm/<token>")
def confirm(token: str):
    user, email = _token_user("confirm", token, "e")
    if user is None or not core.confirm_email(_settings().database_url, user.id, email):
        return render_template("message.html", title="That link does not work", message=(
            "The confirmation link is damaged or older than 48 hours. Ask for a new one "
            "below."), resend=True), 400
    flash("Your address is confirmed. Log in.")
    return redirect(url_for("accounts.login"), 303)


@accounts.route("/confirm", methods=["GET", "POST"])
@logged_as("account", methods=("POST",))
def resend_confirmation():
    form = EmailForm()
    if form.validate_on_submit():
        user = core.find_user(_settings().database_url, form.email.data)
        if user is not None and user.confirmed_at is None:
            _send_confirmation(user)
        return render_template("message.html", title="Check your e-mail", message=(
            "If that address has an account waiting for confirmation, a new link is on its "
            "way."))
    return render_template("email_form.html", form=form, title="A new confirmation link",
                           action=url_for("accounts.resend_confirmation"),
                           button="Send the link")


# Login and logout ----------------------------------------------------------------------------

@accounts.route("/login", methods=["GET", "POST"], endpoint="login")
@logged_as("login", methods=("POST",))
def login_page():
    form = LoginForm()
    if form.validate_on_submit():
        result = core.log_in(_settings(), form.email.data, form.password.data)
        if result.locked_now is not None:
            _mail_lockout(result.locked_now)
        if result.user is not None:
            claimed = login.begin(result.user)
            if claimed:
                flash(f"{claimed} job(s) you made before logging in are now in your "
                      "account.")
            return redirect(_safe_next(request.args.get("next")), 303)
        if result.unconfirmed:
            flash("Confirm your address first: follow the link in the message we sent. "
                  "No message? Ask for a new link.")
            return redirect(url_for("accounts.resend_confirmation"), 303)
        form.password.errors.append(LOGIN_FAILED)
    return render_template("login.html", form=form), 401 if form.errors else 200


def _mail_lockout(user) -> None:
    until = user.locked_until.strftime("%Y-%m-%d %H:%M UTC")
    _mail(user.email, "Your dicomstl account is locked for a while",
          f"There were {_settings().login_lockout_after} failed logins in a row to your "
          f"account, so it is locked until {until}. If that was not you, someone may be "
          f"guessing your password; choose a new one: {link('accounts.reset_request')}")


@accounts.post("/logout")
def logout():
    login.end()
    flash("You are logged out.")
    return redirect(url_for("pages.home"), 303)


# Password reset ------------------------------------------------------------------------------

@accounts.route("/reset", methods=["GET", "POST"])
@logged_as("account", methods=("POST",))
def reset_request():
    form = EmailForm()
    if form.validate_on_submit():
        user = core.find_user(_settings().database_url, form.email.data)
        if user is not None:
            token = tokens.make(_settings().secret_key, "reset", {
                "u": user.id, "f": tokens.fingerprint(user.password_hash)})
            _mail(user.email, "Reset your dicomstl password",
                  "Choose a new password here (the link works once, for one hour):\n\n"
                  f"{link('accounts.reset', token=token)}\n\nIf you did not ask for this, "
                  "ignore this message: your password stays as it is.")
        return render_template("message.html", title="Check your e-mail", message=(
            "If that address has an account, a link to choose a new password is on its way. "
            "It works once, for one hour."))
    return render_template("email_form.html", form=form, title="Reset your password",
                           action=url_for("accounts.reset_request"), button="Send the link")


@accounts.route("/reset/<token>", methods=["GET", "POST"])
@logged_as("account", methods=("POST",))
def reset(token: str):
    url = _settings().database_url
    user, fingerprint = _token_user("reset", token, "f")
    if user is None or fingerprint != tokens.fingerprint(user.password_hash):
        return render_template("message.html", title="That link does not work", message=(
            "The reset link is damaged, older than one hour, or was used already. Ask for a "
            "new one."), reset=True), 400
    form = NewPasswordForm()
    if form.validate_on_submit():
        try:
            core.set_password(url, user.id, form.password.data)
        except AccountError as exc:
            form.password.errors.append(str(exc))
        else:
            login.end()
            flash("Your password is changed, and every session of the account has ended. "
                  "Log in with the new one.")
            return redirect(url_for("accounts.login"), 303)
    return render_template("reset.html", form=form), 400 if form.errors else 200


# The account page ----------------------------------------------------------------------------

def _page(status: int = 200, **extra):
    """The account page for the logged-in user (``extra``: a new key to show once, a form
    with errors)."""
    settings = _settings()
    me = login.account()
    url = settings.database_url
    month = utcnow().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    rows, total = jobs.list_jobs(settings, me.jobs_owner, JOBS_SHOWN, 0)
    forms = {"name_form": NameForm(name=me.org.name), "invite_form": InviteForm(prefix="invite"),
             "password_form": ChangePasswordForm(prefix="pw"),
             "erase_form": ConfirmPasswordForm(prefix="erase"), "action": ActionForm()}
    forms.update({k: v for k, v in extra.items() if k.endswith("_form")})
    return render_template(
        "account.html", me=me, org=me.org, plan_live=organisations.plan_live(me.org),
        balance=me.org.credits,  # read with the account at this request's start
        used_this_month=credits.used_since(url, me.org.id, month),
        ledger=credits.history(url, me.org.id, 20),
        keys=apikeys.list_keys(url, me.org.id),
        keys_allowed=keys_allowed(settings, me),
        jobs=[public_view(j) for j in rows], jobs_total=total,
        members=organisations.members(url, me.org.id),
        invitations=organisations.invitations(url, me.org.id) if me.owner else [],
        billing=settings.billing_enabled, result_kept=result_kept(settings),
        kept_years=round(INVOICE_KEEP / dt.timedelta(days=365)),
        new_key=extra.get("new_key"), **forms), status


def keys_allowed(settings: Settings, me: login.Account) -> bool:
    """Whether the account's organisation may make API keys: the bulk API comes with the
    clinic plan (on a server without payments, every account may)."""
    return not settings.billing_enabled or organisations.plan_live(me.org)


@accounts.get("/account")
@login_required
def account():
    return _page()


@accounts.post("/account/keys")
@login_required
def create_key():
    me = login.account()
    if not keys_allowed(_settings(), me):
        return answer(402, "API keys come with the clinic plan", link=(
            url_for("billing.pricing"), "See the clinic plan"))
    name = " ".join(request.form.get("name", "").split())[:200] or "API key"
    made = apikeys.create_key(_settings().database_url, name, me.org.id, me.id)
    return _page(201, new_key=made)


@accounts.post("/account/keys/<prefix>/revoke")
@login_required
def revoke_key(prefix: str):
    if not apikeys.revoke_key(_settings().database_url, prefix, login.account().org.id):
        abort(404, "no such key in your organisation")
    flash(f"The key {prefix} is revoked: it no longer works.")
    return redirect(url_for("accounts.account"), 303)


@accounts.post("/account/organisation")
@login_required
def rename_organisation():
    me = login.account()
    if not me.owner:
        abort(403, "only an owner can rename the organisation")
    form = NameForm()
    if not form.validate_on_submit():
        return _page(400, name_form=form)
    organisations.rename(_settings().database_url, me.org.id, form.name.data)
    return redirect(url_for("accounts.account"), 303)


@accounts.post("/account/members")
@login_required
def invite():
    me = login.account()
    form = InviteForm(prefix="invite")
    if not form.validate_on_submit():
        return _page(400, invite_form=form)
    if not me.owner:
        abort(403, "only an owner of the organisation can invite")
    try:
        token = organisations.invite(_settings().database_url, me.org.id, me.id,
                                     form.email.data)
    except (AccountError, MembershipError) as exc:
        form.email.errors.append(str(exc))
        return _page(400, invite_form=form)
    name = me.org.name or me.email
    _mail(core.normalise_email(form.email.data), f"An invitation to {name} on dicomstl",
          f"{me.email} invites you to join {name} on dicomstl, to share its credits, API "
          f"keys and jobs. Accept (you need an account with this address; make one if you "
          f"have none): {link('accounts.invitation', token=token)}\n\nThe invitation is "
          f"valid for {organisations.INVITATION_DAYS} days.")
    flash("The invitation is sent.")
    return redirect(url_for("accounts.account"), 303)


@accounts.post("/account/invitations/<int:invitation_id>/withdraw")
@login_required
def withdraw(invitation_id: int):
    me = login.account()
    try:
        found = organisations.withdraw(_settings().database_url, me.org.id, me.id,
                                       invitation_id)
    except MembershipError as exc:
        abort(403, str(exc))
    if not found:
        abort(404, "no such invitation in your organisation")
    return redirect(url_for("accounts.account"), 303)


@accounts.post("/account/members/<int:user_id>/remove")
@login_required
def remove_member(user_id: int):
    me = login.account()
    try:
        organisations.remove(_settings().database_url, me.org.id, me.id, user_id)
    except MembershipError as exc:
        abort(403 if "only" in str(exc) else 404, str(exc))
    flash("You left the organisation." if user_id == me.id else "The member is removed.")
    return redirect(url_for("accounts.account"), 303)


@accounts.route("/invitations/<token>", methods=["GET", "POST"])
@login_required
def invitation(token: str):
    me = login.account()
    url = _settings().database_url
    try:
        found = organisations.find_invitation(url, token)
    except MembershipError as exc:
        return render_template("message.html", title="That invitation does not work",
                               message=str(exc)), 404
    target = organisations.get_org(url, found.org_id)
    if request.method == "POST":  # its CSRF token checked, as every form's
        try:
            organisations.accept(url, token, me.id)
        except MembershipError as exc:
            flash(str(exc))
            return render_template("invitation.html", org=target, token=token,
                                   form=ActionForm(), balance=me.org.credits), 409
        flash(f"You are a member of {target.name or 'the organisation'} now.")
        return redirect(url_for("accounts.account"), 303)
    return render_template("invitation.html", org=target, token=token, form=ActionForm(),
                           balance=me.org.credits, wrong_address=found.email != me.email)


@accounts.post("/account/password")
@login_required
def change_password():
    me = login.account()
    form = ChangePasswordForm(prefix="pw")
    if not form.validate_on_submit():
        return _page(400, password_form=form)
    url = _settings().database_url
    if not core.check_current_password(url, me.id, form.current.data):
        form.current.errors.append("that is not your current password")
        return _page(400, password_form=form)
    try:
        user = core.set_password(url, me.id, form.password.data)
    except AccountError as exc:
        form.password.errors.append(str(exc))
        return _page(400, password_form=form)
    login.begin(user)  # this session goes on; every other one has ended
    flash("Your password is changed; every other session of the account has ended.")
    return redirect(url_for("accounts.account"), 303)


@accounts.post("/account/erase")
@login_required
@logged_as("account")
def erase():
    """Erase the account at once, after the password is entered again (the IP log's row of
    this request names no account: it is gone)."""
    me = login.account()
    form = ConfirmPasswordForm(prefix="erase")
    if not form.validate_on_submit() or not core.check_current_password(
            _settings().database_url, me.id, form.password.data):
        form.password.errors.append("enter your password to erase the account")
        return _page(400, erase_form=form)
    done = privacy.erase(_settings(), me.id)
    login.end()
    g.pop("account_id", None)
    return render_template("erased.html", erased=done,
                           kept_years=round(INVOICE_KEEP / dt.timedelta(days=365)))
