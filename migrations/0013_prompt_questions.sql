-- Questions the bot asked in a chat, waiting for the user's reply to be the prompt: "what should I do with
-- this picture?" (an edit of the pictures named by their platform handles) or "the new prompt for this
-- image?" (a remix of image_id). Keyed by the question's message, so a reply finds it after a restart.
CREATE TABLE image.prompt_questions (
    platform      text        NOT NULL,
    chat_id       text        NOT NULL,
    message_id    text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('edit', 'remix')),
    asked_of      text        NOT NULL,                 -- the platform user id the question was for
    image_id      text        REFERENCES image.images (id),
    file_refs     jsonb       NOT NULL DEFAULT '[]',   -- edit: the pictures' platform handles, in order
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (platform, chat_id, message_id),
    CHECK ((kind = 'remix') = (image_id IS NOT NULL))
);
