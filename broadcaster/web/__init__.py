"""Browser pages served by the service itself: the operator console and the kiosk.

Plain files under ``static/`` (no build step, nothing fetched from elsewhere at
run time); :mod:`broadcaster.web.pages` serves them with a strict
Content-Security-Policy.
"""
