"""The Gradio web UI: Library, Search, Chat and Settings tabs over one PhotoService.

    python -m app serve [--db DB_DIR] [--model MODEL] [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--share]

Safe by default: binds 127.0.0.1; --host 0.0.0.0 and --share only when asked; serves only image files
inside the indexed roots and the server's own temp folder (uploads, thumbnails); no analytics, run
history, monitoring or MCP endpoints; uploads are capped at MAX_UPLOAD. Every event handler has a
stable api_name, so the same flows work through gradio_client.
"""

from __future__ import annotations

import os

# Before gradio is imported: no analytics or version-check calls, whatever the environment says.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import dataclasses  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from urllib.parse import quote  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from app.answer import Answerer  # noqa: E402
from app.config import ConfigError, SearchConfig  # noqa: E402
from app.search import Filters, Hit, QueryError  # noqa: E402
from app.service import CHAT_THUMBNAIL_SIDE, PhotoService  # noqa: E402
from app.store import StoreError  # noqa: E402

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "25mb"  # a query photo, not a library: phone photos are 3-12 MB
# Temp files (uploads, thumbnails) older than this are deleted while the server runs.
TEMP_MAX_AGE_S = 6 * 3600
MAX_K = 60
# Image toolbars without "share" (it uploads the photo to huggingface.co).
NO_SHARE = ["download", "fullscreen"]
# Share buttons Gradio adds to media inside chat messages regardless of settings: hidden.
CSS = 'button[aria-label="Share"] { display: none !important; }'

# Failures the user can act on: shown in the page instead of a generic error.
USER_ERRORS = (QueryError, ConfigError, StoreError, FileNotFoundError)
_FILE_ROUTE = re.compile(r"^(?:/gradio_api)?/(file=|file/|proxy=)(.*)$", re.DOTALL)


@dataclass
class ServeOptions:
    """How the server listens. share/0.0.0.0 expose the photos beyond this machine: opt-in only."""

    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    share: bool = False
    auth: tuple[str, str] | None = None
    max_file_size: str = MAX_UPLOAD


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """"USER:PASS" -> (user, pass)."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth wants USER:PASS")
    return user, password


# ------------------------------------------------------------------------------------- file guard


class FileGuard:
    """ASGI middleware in front of Gradio's file routes: only the server's temp folder and image files
    inside the indexed roots are served; URLs (Gradio would fetch them: an outbound connection) and
    the proxy route are refused. `..`, absolute paths elsewhere and symlinks out of the roots get 403."""

    def __init__(self, app, service: PhotoService, temp_dir: str):
        self.app = app
        self.service = service
        self.temp_dir = os.path.realpath(temp_dir)

    def allowed(self, url_path: str) -> bool:
        m = _FILE_ROUTE.match(url_path)
        if not m:
            return True  # not a file route
        kind, target = m.groups()
        if kind == "proxy=" or "://" in target or target.startswith(("http:", "https:")):
            return False
        real = os.path.realpath(os.path.abspath(target))  # as Gradio reads it, then symlinks resolved
        if real == self.temp_dir or real.startswith(self.temp_dir + os.sep):
            return True
        return self.service.servable(real)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self.allowed(scope.get("path", "")):
            body = b'{"detail":"File not allowed."}'
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------- helpers


def _filters(after: str, before: str, folder: str | None) -> Filters:
    f = Filters(after=(after or "").strip() or None, before=(before or "").strip() or None,
                folder=(folder or "").strip() or None)
    f.where()  # bad dates fail here with a clear message
    return f


def _min_score(threshold) -> float | None:
    return float(threshold) if threshold and float(threshold) > 0 else None


def _counts_md(stats: dict) -> str:
    roots = ", ".join(f"`{r}`" for r in stats["roots"]) or "none yet"
    return (f"**{stats['photos']} photos indexed**, {stats['skipped']} skipped  \n"
            f"Folders: {roots}  \nModel: `{stats['model']}` (fingerprint `{stats['fingerprint']}`)")


def _for_json(record: dict) -> dict:
    """A result for a gr.JSON view: "path" renamed "photo" (gradio_client would take {"path": ...}
    for a file to download)."""
    return {("photo" if key == "path" else key): value for key, value in record.items()}


def _photo(path: str) -> dict:
    """A photo inside a chat message (its share button is hidden by CSS)."""
    return {"path": path}


def _caption(hit: Hit) -> str:
    return f"{hit.score:.3f} · {Path(hit.path).name}"


class _Handlers:
    """Event handlers (closures over one PhotoService); each returns values for its outputs."""

    def __init__(self, service: PhotoService):
        self.s = service

    # Library ----------------------------------------------------------------------------------
    def library_state(self):
        stats = self.s.stats()
        job = self.s.job
        status = job.describe() if job else "Choose or type a photo folder and press Index."
        return status, _counts_md(stats), self.s.skip_list()

    def _follow_job(self, job, progress):
        while job.state == "running":
            if job.total:
                progress((job.done, job.total), desc="indexing", unit="photos")
            else:
                progress(None, desc="looking for photos")
            time.sleep(0.2)
        if job.state == "failed":
            raise gr.Error(job.describe())
        status, counts, skips = self.library_state()
        return status, counts, skips, gr.update(choices=self.s.folders()), gr.update(choices=self.s.roots)

    def index_folder(self, folder: str, progress=gr.Progress()):
        try:
            job = self.s.start_indexing(folder)
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        return self._follow_job(job, progress)

    def reindex_all(self, progress=gr.Progress()):
        if not self.s.roots:
            raise gr.Error("no folders indexed yet: index a folder first")
        return self._follow_job(self.s.start_indexing(list(self.s.roots)), progress)

    # Search -----------------------------------------------------------------------------------
    def _results(self, hits: list[Hit], selected: str = "", selected_md: str = ""):
        gallery = [(self.s.thumbnail(h.path), _caption(h)) for h in hits]
        results = [_for_json(h.to_json()) for h in hits]
        status = f"{len(hits)} photos" if hits else "No matching photos."
        return gallery, results, status, selected, selected_md

    def search(self, text, image, after, before, folder, threshold, k):
        try:
            if not (text or "").strip() and not image:
                raise QueryError("type what to look for, or upload a photo")
            hits = self.s.search(text=(text or "").strip() or None, image=image or None, k=int(k),
                                 min_score=_min_score(threshold), filters=_filters(after, before, folder))
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        return self._results(hits)

    def find_similar(self, selected, after, before, folder, threshold, k):
        try:
            path = self.s.indexed_photo(selected)
            hits = self.s.search(image=path, k=int(k), min_score=_min_score(threshold),
                                 filters=_filters(after, before, folder))
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        # The photo stays selected (to ask about it next).
        return self._results(hits, path, f"Photos like **{Path(path).name}**")

    def select_photo(self, results, evt: gr.SelectData):
        if not results or evt.index is None or evt.index >= len(results):
            return "", ""
        hit = results[evt.index]
        path = hit["photo"]
        link = "/gradio_api/file=" + quote(path)
        md = (f"**{Path(path).name}** · score {hit['score']:.3f} · taken {hit['date'][:10]}  \n"
              f"`{path}` · [open original]({link})")
        return path, md

    def pick_for_chat(self, selected):
        try:
            path = self.s.indexed_photo(selected)
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        return gr.Tabs(selected="chat"), path, f"Asking about **{Path(path).name}**"

    # Chat -------------------------------------------------------------------------------------
    def chat(self, message, upload, picked, history, k, answer_threshold, max_context, margin=None, rerank_top=None,
             decompose=None):
        question = (message or "").strip()
        if not question:
            raise gr.Error("type a question")
        history = list(history or [])
        cfg = dataclasses.replace(self.s.answer_config, k=int(k), min_score=float(answer_threshold),
                                  max_context=int(max_context))
        if margin is not None:
            cfg.context_margin = float(margin)
        if rerank_top is not None:
            cfg.rerank_top = int(rerank_top)
        if decompose is not None:
            cfg.decompose = bool(decompose)
        answerer = Answerer(self.s.model, self.s.index, cfg)
        try:
            image = upload or (self.s.indexed_photo(picked) if picked else None)
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        history.append({"role": "user", "content": question})
        if image:
            history.append({"role": "user", "content": _photo(self.s.thumbnail(image, CHAT_THUMBNAIL_SIDE))})
        history.append({"role": "assistant", "content": ""})
        result = None
        try:
            for result in answerer.stream(question, image=image):
                history[-1] = {"role": "assistant", "content": result.text or "…"}
                yield history, [], {}, "", "Answering…"
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        cited = [s for s in result.sources if s.cited and s.n is not None]
        if not result.text:
            history[-1] = {"role": "assistant", "content": "(the model gave no answer)"}
        elif cited:
            lines = "  \n".join(f"[{s.n}] {Path(s.path).name} · {s.date}" for s in cited)
            history[-1] = {"role": "assistant", "content": f"{result.text}\n\n{lines}"}
            history += [{"role": "assistant", "content": _photo(self.s.thumbnail(s.path, CHAT_THUMBNAIL_SIDE))}
                        for s in cited]
        gallery = [(self.s.thumbnail(s.path), f"[{s.n}] {Path(s.path).name}") for s in cited]
        answer = result.to_json()
        if not result.found:
            done = "No matching photo."
        elif image:
            done = "Answered about one photo."
        else:
            done = f"Answered from {len(result.sources)} photo(s), cited {len(cited)}."
        yield history, gallery, {**answer, "sources": [_for_json(s) for s in answer["sources"]]}, "", done

    # Settings ---------------------------------------------------------------------------------
    def load_model(self, model):
        try:
            self.s.switch_model(model)
        except USER_ERRORS as e:
            raise gr.Error(str(e)) from None
        except Exception as e:  # a bad folder or hub id: say so, keep the page usable
            raise gr.Error(f"could not load {model}: {e}") from None
        stats = self.s.stats()
        note = "" if stats["photos"] else " This model has no index yet: re-index in the Library tab."
        return stats, f"Loaded `{stats['model']}`.{note}"

    def stats(self):
        return self.s.stats()


# ------------------------------------------------------------------------------------- layout


def build_ui(service: PhotoService) -> gr.Blocks:
    """The four-tab app. Handlers are methods of _Handlers; api_names are the stable API."""
    h = _Handlers(service)
    stats = service.stats()
    with gr.Blocks(title="CAFe Photos", analytics_enabled=False, delete_cache=(600, TEMP_MAX_AGE_S)) as demo:
        gr.Markdown("## CAFe Photos — search and ask about your photos, locally")
        with gr.Tabs(selected="library") as tabs:
            # ---------------------------------------------------------------- Library
            with gr.Tab("Library", id="library", elem_id="tab-library"):
                with gr.Row():
                    folder = gr.Textbox(label="Photo folder", placeholder="/home/you/Pictures", scale=4,
                                        elem_id="library-folder")
                    known = gr.Dropdown(label="Indexed folders", choices=service.roots, value=None, scale=2,
                                        elem_id="library-known")
                with gr.Row():
                    index_btn = gr.Button("Index folder", variant="primary", elem_id="index-button")
                    reindex_btn = gr.Button("Re-index all folders", elem_id="reindex-button")
                status = gr.Markdown("Choose or type a photo folder and press Index.", elem_id="library-status")
                counts = gr.Markdown(_counts_md(stats), elem_id="library-counts")
                skips = gr.Dataframe(headers=["path", "reason", "detail"], value=service.skip_list(),
                                     label="Skipped files", interactive=False, elem_id="library-skips")
                timer = gr.Timer(2.0)
            # ---------------------------------------------------------------- Search
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                with gr.Row():
                    with gr.Column(scale=3):
                        query = gr.Textbox(label="Describe the photo", placeholder="a red circle on a gray background",
                                           elem_id="search-text")
                        with gr.Row():
                            after = gr.Textbox(label="Taken on or after", placeholder="YYYY-MM-DD", elem_id="search-after")
                            before = gr.Textbox(label="Taken before", placeholder="YYYY-MM-DD", elem_id="search-before")
                            folder_filter = gr.Dropdown(label="Folder", choices=service.folders(), value=None,
                                                        allow_custom_value=True, elem_id="search-folder")
                        threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Minimum score (0 = off)",
                                              elem_id="search-threshold")
                        search_btn = gr.Button("Search", variant="primary", elem_id="search-button")
                    with gr.Column(scale=1):
                        query_image = gr.Image(label="More like this (optional photo)", type="filepath",
                                               sources=["upload", "clipboard"], height=200, buttons=["fullscreen"],
                                               elem_id="search-image")
                search_status = gr.Markdown("", elem_id="search-status")
                gallery = gr.Gallery(label="Results", columns=5, height="auto", object_fit="contain",
                                     allow_preview=True, buttons=NO_SHARE, elem_id="search-gallery")
                with gr.Row():
                    selected = gr.Textbox(label="Selected photo", interactive=False, scale=3, elem_id="search-selected")
                    similar_btn = gr.Button("Find similar", elem_id="similar-button")
                    ask_btn = gr.Button("Ask about this photo", elem_id="ask-photo-button")
                selected_md = gr.Markdown("", elem_id="search-selected-info")
                with gr.Accordion("Result details", open=False):
                    results = gr.JSON(label="Results", elem_id="search-results")
            # ---------------------------------------------------------------- Chat
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                with gr.Row():
                    with gr.Column(scale=3):
                        chatbot = gr.Chatbot(label="Ask your photos", height=420, elem_id="chat-history",
                                             feedback_options=None, buttons=["copy", "copy_all"])
                        message = gr.Textbox(label="Question", placeholder="What color is the background in the photo "
                                             "with the red circle?", elem_id="chat-message")
                        send_btn = gr.Button("Ask", variant="primary", elem_id="chat-send")
                        chat_status = gr.Markdown("", elem_id="chat-status")
                    with gr.Column(scale=2):
                        chat_upload = gr.Image(label="Ask about this photo (optional)", type="filepath",
                                               sources=["upload", "clipboard"], height=200, buttons=["fullscreen"],
                                               elem_id="chat-image")
                        picked = gr.Textbox(label="Photo picked from search", interactive=False, elem_id="chat-picked")
                        picked_md = gr.Markdown("")
                        clear_pick = gr.Button("Clear picked photo", size="sm")
                        cited = gr.Gallery(label="Cited photos", columns=3, fit_columns=False, height=260,
                                           object_fit="contain",
                                           buttons=NO_SHARE, elem_id="chat-cited")
                        with gr.Accordion("Answer details", open=False):
                            answer_json = gr.JSON(label="Answer", elem_id="chat-answer")
            # ---------------------------------------------------------------- Settings
            with gr.Tab("Settings", id="settings", elem_id="tab-settings"):
                with gr.Row():
                    model_box = gr.Textbox(label="Model (folder or hub id)", value=service.model.name, scale=4,
                                           elem_id="settings-model")
                    load_btn = gr.Button("Load model", elem_id="settings-load")
                model_status = gr.Markdown("")
                k = gr.Slider(1, MAX_K, value=SearchConfig.k, step=1, label="Results per search (k)",
                              elem_id="settings-k")
                answer_threshold = gr.Slider(0.0, 1.0, value=service.answer_config.min_score, step=0.01,
                                             label="Answer threshold (no photo above it: no answer)",
                                             elem_id="settings-answer-threshold")
                with gr.Row():
                    max_context = gr.Slider(1, 6, value=service.answer_config.max_context, step=1,
                                            label="At most this many photos shown to the model per answer",
                                            elem_id="settings-context")
                    margin = gr.Slider(0.0, 0.2, value=service.answer_config.context_margin, step=0.005,
                                       label="Show photos within this score of the best (context margin)",
                                       elem_id="settings-margin")
                    rerank_top = gr.Slider(0, MAX_K, value=service.answer_config.rerank_top, step=1,
                                           label="Re-rank this many of the best photos with the model (0: off)",
                                           elem_id="settings-rerank")
                    decompose = gr.Checkbox(value=service.answer_config.decompose, elem_id="settings-decompose",
                                            label='Look for each thing "the photo with ..." names')
                stats_json = gr.JSON(value=stats, label="Index statistics", elem_id="settings-stats")
                stats_btn = gr.Button("Refresh statistics", size="sm")

        # ------------------------------------------------------------------------ events
        library_out = [status, counts, skips, folder_filter, known]
        index_btn.click(h.index_folder, [folder], library_out, api_name="index_folder", concurrency_limit=1,
                        concurrency_id="index")
        reindex_btn.click(h.reindex_all, None, library_out, api_name="reindex", concurrency_limit=1,
                          concurrency_id="index")
        known.change(lambda v: v or gr.update(), [known], [folder], api_visibility="private")
        timer.tick(h.library_state, None, [status, counts, skips], show_progress="hidden",
                   api_visibility="private")
        demo.load(h.library_state, None, [status, counts, skips], api_name="library_status")

        filters_in = [after, before, folder_filter, threshold, k]
        search_out = [gallery, results, search_status, selected, selected_md]
        search_btn.click(h.search, [query, query_image, *filters_in], search_out, api_name="search")
        query.submit(h.search, [query, query_image, *filters_in], search_out, api_visibility="private")
        gallery.select(h.select_photo, [results], [selected, selected_md], api_visibility="private")
        similar_btn.click(h.find_similar, [selected, *filters_in], search_out, api_name="find_similar")
        ask_btn.click(h.pick_for_chat, [selected], [tabs, picked, picked_md], api_name="pick_for_chat")
        clear_pick.click(lambda: ("", ""), None, [picked, picked_md], api_visibility="private")

        chat_in = [message, chat_upload, picked, chatbot, k, answer_threshold, max_context, margin, rerank_top, decompose]
        chat_out = [chatbot, cited, answer_json, message, chat_status]
        send_btn.click(h.chat, chat_in, chat_out, api_name="chat")
        message.submit(h.chat, chat_in, chat_out, api_visibility="private")

        load_btn.click(h.load_model, [model_box], [stats_json, model_status], api_name="load_model",
                       concurrency_id="index")
        stats_btn.click(h.stats, None, [stats_json], api_name="stats")
    return demo


# ------------------------------------------------------------------------------------- serving


def make_temp_dir() -> str:
    """The server's private temp folder (uploads, Gradio's cache, thumbnails), mode 0700."""
    return tempfile.mkdtemp(prefix="cafe-photos-ui-")


def launch(service: PhotoService, options: ServeOptions, temp_dir: str, block: bool = True):
    """Build and start the UI; returns (demo, local_url). Blocks until Ctrl-C when `block`."""
    from starlette.middleware import Middleware

    demo = build_ui(service)
    demo.queue(default_concurrency_limit=2)
    _, url, share_url = demo.launch(
        server_name=options.host,
        server_port=options.port,
        share=options.share,
        auth=options.auth,
        # Indexed roots are served (the "open original" link); FileGuard narrows that to image files.
        allowed_paths=list(service.roots),
        max_file_size=options.max_file_size,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        run_history=False,  # would store queries in the browser and offer a cloud-bucket upload
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,
        footer_links=[],
        css=CSS,
        app_kwargs={"middleware": [Middleware(FileGuard, service=service, temp_dir=temp_dir)]},
    )
    # Folders indexed later become servable too (Gradio reads this list on every request).
    service.on_new_root = lambda root: root not in demo.allowed_paths and demo.allowed_paths.append(root)
    print(f"CAFe Photos is running at {url}" + (f" (public link: {share_url})" if share_url else ""), flush=True)
    if options.host not in (LOOPBACK, "localhost", "::1") and not options.auth:
        print(f"warning: listening on {options.host} without --auth: anyone who can reach this machine can "
              "see your photos", flush=True)
    if block:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", flush=True)
        finally:
            demo.close()
    return demo, url


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve(service_factory, options: ServeOptions) -> int:
    """Run the UI until interrupted: a private temp folder for Gradio, removed on exit."""
    # `kill` (SIGTERM) stops the server like Ctrl-C, so the temp folder is removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    temp_dir = make_temp_dir()
    os.environ["GRADIO_TEMP_DIR"] = temp_dir  # uploads and Gradio's file cache live here, nowhere else
    try:
        service = service_factory(thumbs_dir=os.path.join(temp_dir, "thumbs"))
        launch(service, options, temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return 0
