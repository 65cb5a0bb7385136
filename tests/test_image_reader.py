"""ImageReader (core/roles/image_reader/): the Planner asks it about an image of the chat's folder;
the image, read through core/safe_files and checked by its bytes, goes to a vision model as an
OpenAI ``image_url`` content part with a data URL, and the answer goes back to the Planner. Real
rounds against the scripted OpenAI-compatible server (tests/llm_server.py records every request)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image

from core import SessionEventHandler, TaskWeaverApp, TaskWeaverEvent
from core.config import load_config
from core.errors import ConfigError
from core.events import PostEventType
from core.llm.base import ChatRequest
from core.memory import Round
from core.roles.image_reader.image_facts import image_facts
from tests.llm_server import Answer, RecordedRequest, ScriptedLLMServer

ROLES = ["planner", "code_interpreter", "image_reader"]


def picture(kind: str = "PNG", size: tuple[int, int] = (3, 2)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(out, format=kind)
    return out.getvalue()


def planner(send_to: str, message: str) -> Answer:
    body = {"thought": "t", "plan": ["look", "report"], "current_plan_step": "look", "send_to": send_to}
    return Answer(json.dumps({**body, "message": message}))


def scripted_app(app_dir: Path, server: ScriptedLLMServer, **overrides: Any) -> TaskWeaverApp:
    config: dict[str, Any] = {
        "llm.api_type": "openai",
        "llm.api_base": server.base_url,
        "llm.api_key": "test",
        "llm.model": "scripted",
        "llm.timeout": 5,
        "llm.max_retries": 0,
        "execution.prewarm": False,
        "session.roles": ROLES,
        **overrides,
    }
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "taskweaver_config.json").write_text(json.dumps(config))
    return TaskWeaverApp(app_dir=app_dir)


def reader_post(rnd: Round) -> Any:
    return next(p for p in rnd.post_list if p.send_from == "ImageReader")


def image_parts(request: RecordedRequest) -> list[dict[str, Any]]:
    return [
        part
        for message in request.body["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image_url"
    ]


class _Chunks(SessionEventHandler):
    """The message chunks of each post, as the UI receives them."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[str]] = {}

    def handle(self, event: TaskWeaverEvent) -> None:
        if event.t is PostEventType.post_message_update and event.post_id is not None:
            self.chunks.setdefault(event.post_id, []).append(event.msg)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLLMServer]:
    scripted = ScriptedLLMServer().start()
    yield scripted
    scripted.stop()


def test_the_planner_asks_image_reader_about_an_uploaded_png(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """The model request carries the question and the image as a data URL content part; the answer
    reaches the Planner's next request and the user."""
    app = scripted_app(tmp_path / "app", server)
    png = picture()
    start = len(server.requests)
    server.push(
        planner("ImageReader", "What colour is chart.png?"),
        Answer(json.dumps({"answer": "It is a small red rectangle."})),
        planner("User", "The chart is a small red rectangle."),
    )
    session = app.get_session()
    try:
        seen = _Chunks()
        rnd = session.send_message(
            "What is in my chart?", files=[{"name": "chart.png", "content": png}], event_handler=seen
        )
    finally:
        session.stop()
        app.stop()
    assert rnd.state == "finished", rnd.error
    first, vision, second = server.wait_for_requests(start + 3)[start:]
    assert "- ImageReader: ImageReader looks at one image file" in first.body["messages"][0]["content"]
    [part] = image_parts(vision)
    assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(png).decode()
    question = vision.body["messages"][-1]["content"][0]
    assert question["type"] == "text" and "What colour is chart.png?" in question["text"]
    assert "PNG image, 3 x 2 pixels" in question["text"]
    assert reader_post(rnd).message == "It is a small red rectangle." and reader_post(rnd).send_to == "Planner"
    streamed = seen.chunks[reader_post(rnd).id]
    assert len([c for c in streamed if c]) > 1 and "".join(streamed) == "It is a small red rectangle."
    assert second.body["messages"][-1]["content"] == "From ImageReader: It is a small red rectangle."
    assert rnd.reply_text == "The chart is a small red rectangle."


def _refused(tmp_path: Path, server: ScriptedLLMServer, prepare: Any, **overrides: Any) -> tuple[str, list[Any]]:
    """A round where the Planner asks about chart.png after ``prepare(cwd)``; ImageReader's words
    and the requests the model got (it must not be sent the file)."""
    app = scripted_app(tmp_path / "app", server, **overrides)
    start = len(server.requests)
    server.push(planner("ImageReader", "What does chart.png show?"), planner("User", "It could not be read."))
    session = app.get_session()
    try:
        prepare(session.cwd)
        rnd = session.send_message("look at chart.png")
    finally:
        session.stop()
        app.stop()
    assert rnd.state == "finished", rnd.error
    requests = server.wait_for_requests(start + 2)[start:]
    assert len(server.requests) == start + 2 and not any(image_parts(r) for r in requests)
    message = reader_post(rnd).message
    assert requests[1].body["messages"][-1]["content"] == f"From ImageReader: {message}"
    return message, requests


def test_a_symlink_named_like_the_image_is_refused(tmp_path: Path, server: ScriptedLLMServer) -> None:
    secret = tmp_path / "outside.png"
    secret.write_bytes(picture())

    message, _ = _refused(tmp_path, server, lambda cwd: (cwd / "chart.png").symlink_to(secret))
    assert message == "I could not read the image: chart.png is a link; links are not served."


def test_an_oversize_image_is_refused_naming_the_setting(tmp_path: Path, server: ScriptedLLMServer) -> None:
    big = picture(size=(400, 400))
    assert len(big) > 1000

    message, _ = _refused(
        tmp_path, server, lambda cwd: (cwd / "chart.png").write_bytes(big), **{"image_reader.max_image_mb": 0.001}
    )
    assert message == (
        "I could not read the image: chart.png is over the 0.001 MB limit for images (image_reader.max_image_mb)."
    )


def test_a_file_that_is_not_an_image_is_refused(tmp_path: Path, server: ScriptedLLMServer) -> None:
    message, _ = _refused(tmp_path, server, lambda cwd: (cwd / "chart.png").write_text("x,y\n1,2\n"))
    assert message == "chart.png is not a PNG, JPEG, GIF or WEBP image (judged by its contents)."


def test_offline_it_says_the_format_and_dimensions(tmp_path: Path) -> None:
    """No model: an uploaded image goes to ImageReader, which says what the header tells and that
    a vision model is needed for more."""
    config = {"llm.api_type": "offline", "session.roles": ROLES, "execution.prewarm": False}
    app = TaskWeaverApp(app_dir=tmp_path, config=config)
    session = app.get_session()
    try:
        rnd = session.send_message("what is this?", files=[{"name": "photo.jpg", "content": picture("JPEG", (64, 48))}])
    finally:
        session.stop()
        app.stop()
    assert rnd.state == "finished", rnd.error
    said = reader_post(rnd).message
    assert said.startswith("photo.jpg is a JPEG image, 64 x 48 pixels,")
    assert "No vision model is configured" in said and "image_reader.llm_alias" in said
    assert said in rnd.reply_text


def test_image_reader_llm_alias_calls_its_own_vision_model(tmp_path: Path, server: ScriptedLLMServer) -> None:
    """``image_reader.llm_alias`` is honoured: the image goes to that model's server, the Planner's
    turns to the primary one; the key is not warned."""
    vision = ScriptedLLMServer().start()
    try:
        llm_configs = {"eyes": {"llm.api_base": vision.base_url, "llm.model": "vision-model"}}
        app = scripted_app(
            tmp_path / "app", server, **{"ext_llms.llm_configs": llm_configs, "image_reader.llm_alias": "eyes"}
        )
        own = app.backend_for_role("image_reader").configured()
        assert own is not None and own.model == "vision-model"
        start = len(server.requests)
        server.push(planner("ImageReader", "What is in plot.webp?"), planner("User", "A red square."))
        vision.push(Answer(json.dumps({"answer": "A red square."})))
        session = app.get_session()
        try:
            rnd = session.send_message("what is it?", files=[{"name": "plot.webp", "content": picture("WEBP")}])
        finally:
            session.stop()
            app.stop()
        assert rnd.state == "finished", rnd.error
        [seen] = vision.wait_for_requests(1)
        assert seen.body["model"] == "vision-model"
        assert image_parts(seen)[0]["image_url"]["url"].startswith("data:image/webp;base64,")
        assert not any(image_parts(r) for r in server.wait_for_requests(start + 2)[start:])
        assert reader_post(rnd).message == "A red square."
    finally:
        vision.stop()


def test_image_reader_keys_are_its_own_and_not_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    given = {
        "session.roles": ROLES,
        "ext_llms.llm_configs": {"eyes": {"llm.model": "v"}},
        "image_reader.llm_alias": "eyes",
        "image_reader.max_image_mb": 5,
    }
    with caplog.at_level("WARNING", logger="weaver.config"):
        config = load_config(tmp_path, given)
    assert config.role_settings["image_reader"] == {"llm_alias": "eyes", "max_image_mb": 5}
    assert config.llm_alias_of("image_reader") == "eyes"
    assert not caplog.records


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "GIF", "WEBP"])
def test_the_format_and_dimensions_come_from_the_bytes(kind: str) -> None:
    facts = image_facts(picture(kind, (37, 21)))
    assert facts is not None and (facts.format, facts.width, facts.height) == (kind, 37, 21)
    assert image_facts(b"GIF") is None and image_facts(b"not an image at all") is None


def test_other_providers_get_the_image_in_their_own_format() -> None:
    """Anthropic: a base64 image block; Gemini: inlineData; Ollama: images beside the text."""
    from core.config import LLMSettings
    from core.llm.anthropic_backend import AnthropicBackend
    from core.llm.gemini_backend import GeminiBackend
    from core.llm.ollama_backend import OllamaBackend

    data = base64.b64encode(picture()).decode()
    parts = [
        {"type": "text", "text": "what?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
    ]
    request = ChatRequest(
        role="ImageReader", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": parts}]
    )
    settings = dict(api_key="k", model="m", api_base="http://127.0.0.1:9")
    anthropic = AnthropicBackend(LLMSettings(api_type="anthropic", **settings)).body(request)[0]
    assert anthropic["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "what?"},
    ]
    gemini = GeminiBackend(LLMSettings(api_type="google_genai", **settings)).body(request)
    assert gemini["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/png", "data": data}},
        {"text": "what?"},
    ]
    ollama = OllamaBackend(LLMSettings(api_type="ollama", **settings)).body(request)
    assert ollama["messages"][1] == {"role": "user", "content": "what?", "images": [data]}


def test_an_image_that_is_not_a_data_url_is_refused_naming_the_provider() -> None:
    from core.config import LLMSettings
    from core.llm.anthropic_backend import AnthropicBackend
    from core.llm.base import LLMError

    parts = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]
    request = ChatRequest(role="ImageReader", messages=[{"role": "user", "content": parts}])
    backend = AnthropicBackend(LLMSettings(api_type="anthropic", api_key="k", model="m"))
    with pytest.raises(LLMError, match="Anthropic is sent images only as base64 data: URLs"):
        backend.body(request)


def test_offline_a_figure_in_a_sub_folder_named_by_the_request_is_read(tmp_path: Path) -> None:
    """A figure code saved (here written into the chat's folder) is found by the name the request
    gives, sub-folder included."""
    config = {"llm.api_type": "offline", "session.roles": ROLES, "execution.prewarm": False}
    app = TaskWeaverApp(app_dir=tmp_path, config=config)
    session = app.get_session()
    try:
        (session.cwd / "figs").mkdir()
        (session.cwd / "figs" / "plot.gif").write_bytes(picture("GIF", (10, 7)))
        rnd = session.send_message("what does figs/plot.gif show?")
    finally:
        session.stop()
        app.stop()
    assert rnd.state == "finished", rnd.error
    assert reader_post(rnd).message.startswith("figs/plot.gif is a GIF image, 10 x 7 pixels,")


@pytest.mark.parametrize("value", [0, -1, "big", 1000])
def test_a_bad_max_image_mb_stops_start_up_naming_the_key(tmp_path: Path, value: Any) -> None:
    config = {"llm.api_type": "offline", "session.roles": ROLES, "image_reader.max_image_mb": value}
    with pytest.raises(ConfigError, match=r"image_reader\.max_image_mb: expected a number of MB above 0"):
        TaskWeaverApp(app_dir=tmp_path, config=config)
