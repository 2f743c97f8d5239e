//! Unit files: systemd syntax and the `[X-Fleet]` section (to be written).
