"""The account, billing and contact forms (Flask-WTF: each carries its CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField, TextAreaField
from wtforms.validators import DataRequired, EqualTo, Length

from dicomstl.accounts import PASSWORD_MAX, PASSWORD_MIN
from dicomstl.inquiries import MESSAGE_MAX

EMAIL = [DataRequired(), Length(max=254)]
NEW_PASSWORD = [DataRequired(), Length(
    min=PASSWORD_MIN, max=PASSWORD_MAX,
    message=f"the password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")]


class RegisterForm(FlaskForm):
    email = EmailField("E-mail", EMAIL)
    password = PasswordField(f"Password ({PASSWORD_MIN} characters or more)", NEW_PASSWORD)
    repeat = PasswordField("Password again", [EqualTo("password", "the passwords differ")])


class LoginForm(FlaskForm):
    email = EmailField("E-mail", EMAIL)
    password = PasswordField("Password", [DataRequired(), Length(max=PASSWORD_MAX)])


class EmailForm(FlaskForm):
    """An address only: a password reset, a new confirmation link, an invitation."""

    email = EmailField("E-mail", EMAIL)


class NewPasswordForm(FlaskForm):
    password = PasswordField(f"New password ({PASSWORD_MIN} characters or more)", NEW_PASSWORD)
    repeat = PasswordField("New password again", [EqualTo("password", "the passwords differ")])


class ChangePasswordForm(NewPasswordForm):
    current = PasswordField("Current password", [DataRequired(), Length(max=PASSWORD_MAX)])


class ConfirmPasswordForm(FlaskForm):
    """Re-entering the password before a grave action (erasure)."""

    password = PasswordField("Your password", [DataRequired(), Length(max=PASSWORD_MAX)])


class NameForm(FlaskForm):
    name = StringField("Organisation name", [DataRequired(), Length(max=200)])


class InviteForm(FlaskForm):
    email = EmailField("Invite a member: their e-mail", EMAIL)


class ContactForm(FlaskForm):
    email = EmailField("Your e-mail", EMAIL)
    message = TextAreaField("Message", [DataRequired(), Length(max=MESSAGE_MAX)])


class ActionForm(FlaskForm):
    """A button that only needs its CSRF token (log out, buy, revoke, remove, accept)."""
