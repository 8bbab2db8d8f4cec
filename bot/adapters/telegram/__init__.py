"""The Telegram front end (python-telegram-bot): commands, buttons and job rendering for Telegram chats.
`frontend.TelegramFrontEnd` is the composition root; everything else is one concern per module."""
