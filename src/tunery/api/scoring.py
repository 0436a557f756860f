"""``POST /v1/score`` (and LLaMA-Factory's ``/v1/score/evaluation``): rewards from a reward model.

A server started on a model trained with stage rm (its adapter folder holds
``value_head.safetensors``) holds a ``RewardScorer`` instead of a ``ChatEngine``:
it scores, and its chat and completion endpoints answer 400 saying so. A chat
server answers ``/v1/score`` with a 400 saying its model is no reward model.

A request sends raw texts (``messages``, LLaMA-Factory's shape) or chat
``conversations`` that each end with the assistant answer to score; these are
rendered with the training template exactly as the reward model's pairs were.
"""

import logging
import secrets
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tunery.api.messages import SYSTEM_ROLES, bad_request, to_message, to_tunery_messages
from tunery.api.protocol import ApiError, ChatMessage, ScoreRequest, ScoreResponse
from tunery.data.conversation import Conversation
from tunery.errors import TuneryError
from tunery.infer.reward import RewardScorer

logger = logging.getLogger(__name__)

SCORE_PATHS = ("/score", "/score/evaluation")
SCORING_FAILED = "The server failed while scoring; see its log."


class ScoreService:
    """The score endpoint, and the refusals that tell clients which kind of model is served."""

    def __init__(self, scorer: RewardScorer | None, model_name: str, check_model: Callable[[str], None]):
        self.scorer = scorer
        self.model_name = model_name
        self.check_model = check_model

    async def score(self, body: ScoreRequest) -> JSONResponse:
        if self.scorer is None:
            raise ApiError(
                400,
                f"'{self.model_name}' is a chat model, not a reward model, so it cannot score; serve the "
                "output of a `stage: rm` run (its folder holds value_head.safetensors) to use /v1/score.",
                code="not_a_reward_model",
            )
        self.check_model(body.model)
        score, inputs = self.inputs_of(body)
        try:
            scores = await run_in_threadpool(score, inputs, body.max_length)
        except TuneryError as err:  # an input the scorer cannot take (an empty text)
            field = "messages" if body.messages is not None else "conversations"
            raise bad_request(str(err), field) from None
        except Exception as err:
            logger.error("Scoring failed", exc_info=err)
            raise ApiError(500, SCORING_FAILED, kind="server_error") from None
        response = ScoreResponse(id=f"scoreval-{secrets.token_hex(12)}", model=self.model_name, scores=scores)
        return JSONResponse(response.model_dump(mode="json"))

    def inputs_of(self, body: ScoreRequest) -> tuple[Callable, list]:
        """The scorer method and its inputs: texts, or conversations (exactly one of them, not empty)."""
        if (body.messages is None) == (body.conversations is None):
            raise bad_request("Send either 'messages' (a list of texts) or 'conversations' (lists of chat "
                              "messages ending with the answer to score), not both or neither.", "messages")
        if body.conversations is None:
            if not body.messages:
                raise bad_request("'messages' is empty; send at least one text to score.", "messages")
            return self.scorer.score_texts, body.messages
        if not body.conversations:
            raise bad_request("'conversations' is empty; send at least one to score.", "conversations")
        return self.scorer.score_conversations, [
            to_scored_conversation(messages, index) for index, messages in enumerate(body.conversations)
        ]

    async def refuse_generation(self) -> JSONResponse:
        """Chat and text completions on a reward model server."""
        raise ApiError(
            400,
            f"This server serves the reward model '{self.model_name}', which scores answers but does not "
            "write them; use POST /v1/score.",
            code="reward_model",
        )


def to_scored_conversation(messages: list[ChatMessage], index: int) -> Conversation:
    """OpenAI messages ending with the assistant answer -> a Conversation (400 naming what is wrong)."""
    where = f"conversations[{index}]"
    if not messages or messages[-1].role != "assistant":
        raise bad_request(f"{where} must end with the assistant message to score.", where)
    if all(message.role in SYSTEM_ROLES for message in messages[:-1]):
        raise bad_request(f"{where} needs a user message before the assistant message to score.", where)
    try:
        system, prompt = to_tunery_messages(messages[:-1])  # checks roles and their order
        answer = to_message(messages[-1], len(messages) - 1)
    except ApiError as err:  # it names messages as if they were the request's: name the conversation
        text = err.message.replace("messages[", f"{where}[")
        param = (err.param or "messages").replace("messages", where, 1)
        raise ApiError(400, text if where in text else f"{where}: {text}", param=param) from None
    return Conversation(messages=[*prompt, answer], system=system)
