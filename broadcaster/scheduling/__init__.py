"""Schedules, triggers, templates and the runner that turns them into announcements."""
