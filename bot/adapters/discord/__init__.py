"""The Discord front end (discord.py): slash commands and buttons in, the core's job events out.

Shaped like the Telegram front end, file for file:
frontend.py   the client, every slash command registered, start-up (log in, gateway, command sync) and stop
handlers.py   commands and button presses, each one core call; errors answered in one place (_answering)
buttons.py    the custom_id codec and the persistent buttons (views)
render.py     texts and captions, pure functions
history.py    /history: pages in a DM (or privately when DMs are closed), ◀ ▶
delivery.py   the JobObserver: the interaction's message from queued to the images, and where a result goes
              when the interaction token no longer works
context.py    what a job remembers to reach Discord again (ReplyContext, stored with the job)
Discord only:
media.py      images fitted under Discord's upload limit
acks.py       acknowledging interactions straight from the gateway event
keepalive.py  the warm HTTP connections those acknowledgements use
uploads.py    uploads sent from the image's bytes without a copy
"""
