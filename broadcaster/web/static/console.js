// console page: see docs/browser.md
