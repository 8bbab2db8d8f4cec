"""Image-generation bot for Discord, Telegram and the console."""
