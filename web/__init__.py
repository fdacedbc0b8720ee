"""The office dashboard, the kiosk screen and the JSON API (Flask).

``create_app(instance)`` builds the app; ``serve(app, host, port)`` runs it under waitress.
The web process never imports ``hardware``: it asks a kiosk for anything physical by
inserting a command row (see :mod:`kiosk.commands`) and shows what the kiosk controller
publishes on its ``Kiosk`` row.

Configuration is layered: the defaults below, then the instance's ``[web]`` (and related)
settings, then ``config`` passed here (tests), and tests may still change ``app.config``
afterwards: everything is read from ``app.config`` at request time. The clock is
``app.config["LOCKER_CLOCK"]`` (a :class:`kiosk.clock.SystemClock` unless injected).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask, current_app, request
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from kiosk.clock import SystemClock
from kiosk.instance import Instance

log = logging.getLogger(__name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def _settings(instance: Instance, simulated: bool) -> dict[str, Any]:
    web = instance.config.web
    return {
        "SECRET_KEY": instance.key("web-session"),
        "SESSION_COOKIE_NAME": "locker_session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": web.secure_cookies,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": web.secure_cookies,
        "PERMANENT_SESSION_LIFETIME": timedelta(hours=10),  # a school day
        "WTF_CSRF_TIME_LIMIT": None,  # valid for the session (pages stay open all day)
        "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
        "JSON_SORT_KEYS": False,
        "LOCKER_LOGIN_ATTEMPTS": web.login_attempts,
        "LOCKER_LOGIN_LOCKOUT_S": web.login_lockout_s,
        # How many reverse proxies stand in front of the app (0: X-Forwarded-For ignored).
        "LOCKER_TRUSTED_PROXIES": web.trusted_proxies,
        "LOCKER_HEARTBEAT_S": instance.config.kiosk.heartbeat_s,
        "LOCKER_GRID_POLL_MS": 2000,
        "LOCKER_SCREEN_POLL_MS": 120,
        "LOCKER_SIMULATED": simulated,
        "LOCKER_SITE_NAME": instance.config.site.name,
    }


def create_app(
    instance: Instance,
    *,
    simulated: bool = False,
    testing: bool = False,
    config: Mapping[str, Any] | None = None,
) -> Flask:
    """The web app for ``instance``. ``simulated`` adds the simulator endpoints and panel
    (never on real hardware); ``config`` overrides settings (tests)."""
    from . import (
        access,
        api,
        audit_log,
        auth,
        commands,
        confiscations,
        core,
        exams,
        exemptions,
        grid,
        health,
        kiosk_screen,
        pupils,
        register,
        reports,
        safeguarding,
        sim,
        templating,
    )

    app = Flask(__name__)
    app.wsgi_app = TrustedProxies(app)  # type: ignore[method-assign]
    app.config["LOCKER_CLOCK"] = SystemClock()
    app.config.update(_settings(instance, simulated))
    if testing:
        app.config["TESTING"] = True
    app.config.update(config or {})
    app.extensions["locker"] = core.LockerApp(instance, simulated)
    app.url_map.converters["id"] = core.IdConverter

    templating.init_app(app)
    auth.init_app(app)  # bearer tokens first: access checks see the API's user
    access.init_app(app)
    for module in (
        grid,
        register,
        confiscations,
        safeguarding,
        exemptions,
        pupils,
        exams,
        reports,
        audit_log,
        health,
        commands,
        kiosk_screen,
        api,
    ):
        app.register_blueprint(module.bp)
    csrf = CSRFProtect()
    csrf.exempt(api.bp)  # the API checks CSRF itself, except for bearer-token requests
    if simulated:
        app.register_blueprint(sim.bp)
        csrf.exempt(sim.bp)
        log.warning("simulated hardware: the /sim endpoints are open to anyone")
    csrf.init_app(app)  # after the access check: strangers are sent to sign in first
    core.register_error_handlers(app)
    app.before_request(core.refuse_nul_characters)
    app.add_url_rule("/favicon.ico", "favicon", favicon)

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> Any:
        return core.error_response(
            "The form has expired or came from another site: reload the page and try again.",
            400,
        )

    @app.after_request
    def security_headers(response: Any) -> Any:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        if request.endpoint not in ("static", "favicon"):
            headers.setdefault("Cache-Control", "no-store")
        return response

    return app


class TrustedProxies:
    """WSGI middleware: the client's address from ``X-Forwarded-For``, through werkzeug's
    ProxyFix, only when ``app.config["LOCKER_TRUSTED_PROXIES"]`` (``[web]
    trusted_proxies``) says how many proxies to trust; with 0 (the default) the header is
    ignored, since anyone can send it. Only the address is taken (the sign-in throttle and
    the audit trail need it); the scheme and host stay as the proxy passes them. Read at
    each request, like every setting."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.inner = app.wsgi_app
        self._fixed: dict[int, ProxyFix] = {}

    def __call__(self, environ: Any, start_response: Any) -> Any:
        count = int(self.app.config.get("LOCKER_TRUSTED_PROXIES") or 0)
        if count <= 0:
            return self.inner(environ, start_response)
        fixed = self._fixed.get(count)
        if fixed is None:
            fixed = self._fixed.setdefault(
                count, ProxyFix(self.inner, x_for=count, x_proto=0, x_host=0)
            )
        return fixed(environ, start_response)


def favicon() -> Any:
    """``/favicon.ico``, which browsers ask for by themselves: the icon the pages name
    (``static/favicon.svg``), so that no page logs a 404."""
    return current_app.send_static_file("favicon.svg")


def tune_for_serving() -> None:
    """Keep long garbage-collector pauses out of response times (once, after start-up).

    A page like the register builds tens of thousands of short-lived objects; each full
    collection would otherwise also walk everything imported at start-up. ``gc.freeze()``
    moves those start-up objects out of the collector's way. ``serve`` calls this; another
    WSGI server should call it once after ``create_app``.
    """
    gc.collect()
    gc.freeze()


def serve(app: Flask, host: str = "127.0.0.1", port: int = 8000, *, threads: int = 8) -> None:
    """Run ``app`` under waitress until interrupted (``locker web``, ``locker demo``)."""
    from waitress import serve as waitress_serve

    tune_for_serving()
    log.info("web app listening on http://%s:%d/", host, port)
    waitress_serve(app, host=host, port=port, threads=threads, ident="locker")
