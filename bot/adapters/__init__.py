"""Front ends: each translates its platform's commands and buttons into calls on the core."""
