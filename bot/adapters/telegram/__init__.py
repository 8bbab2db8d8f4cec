"""The Telegram front end (python-telegram-bot): commands and buttons in, the core's job events out.

Shaped like the Discord front end, file for file:
frontend.py   the PTB Application, every handler registered, command menus, polling or webhook, stop
handlers.py   commands, prompts and button presses, each one core call; errors answered in one place
              (_answering)
buttons.py    the callback_data codec and the keyboards
render.py     texts and captions, fitted to Telegram's limits, pure functions
history.py    /history: pages in the private chat, images resent by file_id
delivery.py   the JobObserver: status message, chat action, preview, then a photo or an album and its buttons
context.py    what a job remembers to reach Telegram again (ReplyContext, stored with the job)
Telegram only:
sending.py    Bot API calls with Telegram's everyday failures handled (chat gone, reply or topic missing,
              text too long, photo too big)
media.py      images made acceptable as Telegram photos
ratelimit.py  429 flood waits, per chat
webhook.py    the webhook server
"""
