"""Public request traces, replayed by name; SOURCE.md gives their origin and licences."""
