"""The offline demo provider: the seed each image reports is the one that drew it."""

from __future__ import annotations

from bot.core.catalogue import DEFAULT_MODELS
from bot.core.providers.base import GeneratedImage
from bot.core.providers.offline import OfflineProvider, draw
from bot.core.providers.runner import ProviderRunner
from tests.plugins.providers import PROMPT, spec

OFFLINE = next(m for m in DEFAULT_MODELS if m.provider == "offline")


def drawn_with_its_seed(image: GeneratedImage) -> bool:
    assert image.seed is not None
    return image.data == draw(PROMPT, None, image.seed, image.width, image.height)


async def test_each_image_reports_the_seed_it_was_drawn_with(runner: ProviderRunner) -> None:
    outcomes = await runner.run(OfflineProvider(), OFFLINE, spec(count=2))

    images = [o.image for o in outcomes if o.image]
    assert [i.seed for i in images] == [1234, 1235]
    assert all(drawn_with_its_seed(i) for i in images)


async def test_without_seed_support_a_rolled_seed_is_reported(runner: ProviderRunner) -> None:
    unseeded = OFFLINE.model_copy(update={"supports_seed": False})

    first = await runner.run(OfflineProvider(), unseeded, spec(count=2))
    again = await runner.run(OfflineProvider(), unseeded, spec(count=2))

    # The job's seed (1234) never reached the drawing: each image names the seed that did draw it, a new
    # one each time (as A1111 rolls for -1), so that a regenerate makes a new picture.
    images = [o.image for o in first + again if o.image]
    assert len(images) == 4 and all(drawn_with_its_seed(i) for i in images)
    assert len({i.seed for i in images} - {1234}) == 4
