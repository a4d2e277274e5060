"""A minimal MCP Apps host page and a headless Chromium driver, for the run view's tests."""
