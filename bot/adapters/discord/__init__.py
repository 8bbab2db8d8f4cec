"""The Discord front end: slash commands and buttons in, the core's job events out, through discord.py.

frontend.py  the client, start-up (login, gateway, command sync) and shutdown
commands.py  slash commands and what every command or button press asks of the core
buttons.py   persistent buttons (DynamicItem) and the custom_id codec
observer.py  the core's job events rendered by editing the interaction's message (or posting anew)
render.py    captions, status lines and fitting images under Discord's upload limit
context.py   what a job must remember to reach Discord later (stored with it in Postgres)
"""
