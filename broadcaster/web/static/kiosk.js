// kiosk page: see docs/browser.md
