"""One policy per model family (key-frame schedules, association, memory live here)."""
