"""The Gradio web UI: Photos, Library, Chat and Settings tabs over one PhotoService.

    python -m app serve [--db DB_DIR] [--model MODEL] [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--share]

The service is the UI's only door to the model and the index. Safe by default: binds 127.0.0.1;
--host 0.0.0.0 and --share only when asked; app.guard serves indexed photos by id and Gradio's file
routes only inside the server's own temp folder; no analytics, run history, monitoring or MCP
endpoints. Every event handler has a stable api_name, so the same flows work through gradio_client.
The CLI (app.__main__) turns telemetry off before this module is imported.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from app.answer import Turn
from app.config import DEFAULT_PORT, LOOPBACK, ConfigError, UIConfig, user_errors
from app.guard import Guard, photo_url
from app.model import not_loadable_message
from app.search import Filters, Hit, QueryError
from app.service import CHAT_THUMBNAIL_SIDE, THUMBNAIL_SIDE, PhotoService

log = logging.getLogger(__name__)

# Image toolbars without "share" (it uploads the photo to huggingface.co).
NO_SHARE = ["download", "fullscreen"]
# Share buttons Gradio adds to media inside chat messages regardless of settings: hidden.
CSS = 'button[aria-label="Share"] { display: none !important; }'

# Failures the user can act on: shown in the page instead of a generic error (the CLI's list: cafe_core,
# imported above through app.service, adds its own).
USER_ERRORS = user_errors()


@dataclass
class ServeOptions:
    """How the server listens. share/0.0.0.0 expose the photos beyond this machine: opt-in only."""

    host: str = LOOPBACK
    port: int = DEFAULT_PORT
    share: bool = False
    auth: tuple[str, str] | None = None
    limits: UIConfig = field(default_factory=UIConfig)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """"USER:PASS" -> (user, pass)."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth wants USER:PASS")
    return user, password


# ------------------------------------------------------------------------------------- helpers


def _filters(after: str, before: str, folder: str | None) -> Filters:
    f = Filters(after=(after or "").strip() or None, before=(before or "").strip() or None,
                folder=(folder or "").strip() or None)
    f.where()  # bad dates fail here with a clear message
    if f.after and f.before and str(f.after) >= str(f.before):
        raise QueryError(f"'taken on or after' ({f.after}) must come before 'taken before' ({f.before})")
    return f


def _problem(n_outputs: int, at: int, message: str, keep: dict | None = None) -> tuple:
    """Outputs for a failed action: one message (in the status line at index ``at``), everything else as
    it was (gr.update() changes nothing; ``keep`` gives the values of State outputs by index)."""
    out = [gr.update()] * n_outputs
    for i, value in (keep or {}).items():
        out[i] = value
    out[at] = f"⚠️ {message}"
    return tuple(out)


def _counts_md(stats: dict) -> str:
    if not stats["photos"]:
        return "**Your library is empty.** Type a photo folder above and press *Index folder* (or Enter)."
    roots = ", ".join(f"`{r}`" for r in stats["roots"]) or "none"
    return f"**{stats['photos']} photos indexed**, {stats['skipped']} skipped  \nFolders: {roots}"


def _day(record: dict) -> str:
    """"26 May 2017" for a result caption."""
    return time.strftime("%d %b %Y", time.localtime(record["taken"])).lstrip("0")


def _record(hit: Hit) -> dict:
    """A result for the page's state and the details view ("photo", not "path": gradio_client would take
    {"path": ...} for a file to download)."""
    return {"photo": hit.path, "id": hit.id, "score": round(float(hit.score), 4), "date": hit.date,
            "taken": hit.taken}


def _photo_md(record: dict) -> str:
    name = Path(record["photo"]).name
    return (f"**{name}** · taken {record['date'][:10]} · score {record['score']:.3f}  \n"
            f"`{record['photo']}` · [open original]({photo_url(record['id'])})")


LIBRARY_OUTPUTS = 6  # status, counts, skips, known folders, folder filter, statistics
TIMER_S = 2.0  # how often each open page asks whether an index job runs
JOB_SETTLE_S = 3 * TIMER_S  # a finished job's outcome is shown by the ticks of this long after it ended
PHOTOS_OUTPUTS = 7  # gallery, status, state, selected, selected info, details, more button
CHAT_OUTPUTS = 6  # chatbot, cited gallery, answer details, message box, status, turns
# The Settings controls that show a model's (calibrated) setting: (config, field), in the order of
# Handlers.settings_values and of the outputs of "load_model".
SETTINGS_SLIDERS = (("search", "k"), ("answer", "min_score"), ("answer", "max_context"),
                    ("answer", "context_margin"), ("answer", "rerank_top"), ("answer", "decompose"))


class _Handlers:
    """Event handlers (closures over one PhotoService); each returns values for its outputs. A failed
    action says why in its status line and leaves everything else as it was (no error toasts)."""

    def __init__(self, service: PhotoService, limits: UIConfig):
        self.s = service
        self.limits = limits

    def _thumbs(self, items, side: int = THUMBNAIL_SIDE) -> list[tuple[str, str]]:
        """[(thumbnail, caption)] of (photo path, caption) items; a photo that can no longer be read (moved,
        deleted or damaged since it was indexed) is left out and logged, never an error for the page."""
        out = []
        for path, caption in items:
            try:
                out.append((self.s.thumbnail(path, side), caption))
            except (QueryError, OSError) as e:
                log.warning("no thumbnail for %s: %s", path, e)
        return out

    def _gallery(self, state: dict) -> list[tuple[str, str]]:
        """The gallery of ``state["shown"]``, which keeps only the photos shown (clicks index into it)."""
        thumbs = {}
        for r in state["shown"]:
            for thumb in self._thumbs([(r["photo"], f"{_day(r)} · {Path(r['photo']).name}")]):
                thumbs[r["photo"]] = thumb
        state["shown"] = [r for r in state["shown"] if r["photo"] in thumbs]
        return [thumbs[r["photo"]] for r in state["shown"]]

    # Library ----------------------------------------------------------------------------------
    def library_state(self):
        """Status, counts, skipped files, and the folder lists, read from the store (page load, timer)."""
        stats = self.s.stats()
        job = self.s.job
        status = job.describe() if job else ("Choose or type a photo folder and press Index." if not stats["photos"]
                                             else "Up to date.")
        folders = self.s.folders()
        return (status, _counts_md(stats), self.s.skip_list(), gr.update(choices=stats["roots"]),
                gr.update(choices=folders), stats)

    def library_tick(self):
        """The timer: library_state while a job runs and just after it ends (every tab sees the run and its
        outcome); otherwise nothing is read (a page load or reload reads the store)."""
        job = self.s.job
        if job is not None and (job.state == "running" or time.time() - job.finished < JOB_SETTLE_S):
            return self.library_state()
        return (gr.update(),) * LIBRARY_OUTPUTS

    def _follow_job(self, job, progress):
        while job.state == "running":
            progress((job.done, job.total) if job.total else None, desc="indexing", unit="photos")
            time.sleep(0.2)
        state = self.library_state()
        return _problem(len(state), 0, job.describe()) if job.state == "failed" else state

    def index_folder(self, folder: str, progress=gr.Progress()):
        try:
            job = self.s.start_indexing(folder)
        except USER_ERRORS as e:
            return _problem(LIBRARY_OUTPUTS, 0, str(e))
        return self._follow_job(job, progress)

    def reindex_all(self, progress=gr.Progress()):
        try:
            job = self.s.reindex_all()
        except USER_ERRORS as e:
            return _problem(LIBRARY_OUTPUTS, 0, str(e))
        return self._follow_job(job, progress)

    # Photos -----------------------------------------------------------------------------------
    def _notes(self, text: str) -> str:
        unknown = self.s.unknown_words(text)
        if not unknown:
            return ""
        words = ", ".join(f"'{w}'" for w in unknown)
        return (f"  \n*This model was trained on the sample world and has never seen {words}: these results "
                f"can only match the shapes, colors, sizes, positions and backgrounds it knows.*")

    def photos(self, text, image, after, before, folder, k, state=None):
        """The Photos view: the library newest first, or the results of a query (text and/or photo). A
        query that cannot run leaves the results as they were and says why in the status line."""
        text = (text or "").strip()
        try:
            filters = _filters(after, before, folder)
            if not text and not image:
                return self._timeline(0, filters)
            shown, below = self.s.search_page(text=text or None, image=image or None, k=int(k), filters=filters)
        except USER_ERRORS as e:
            return _problem(PHOTOS_OUTPUTS, 1, str(e), {2: state or {}})
        what = f"'{text}'" if text else "your photo"
        what = f"your photo and '{text}'" if text and image else what
        status = (f"{len(shown)} photos match {what}" if shown else f"No photo matches {what} well.")
        if below:
            status += f" ({len(below)} more below the relevance cutoff: *Show more*)"
        status += self._notes(text)
        state = {"mode": "search", "shown": [_record(h) for h in shown], "below": [_record(h) for h in below]}
        more = gr.update(visible=bool(below), value=f"Show {len(below)} more below the cutoff")
        return self._gallery(state), status, state, "", "", state["shown"], more

    def _timeline(self, offset: int, filters: Filters | None = None):
        page = self.limits.page_size
        hits, total = self.s.timeline(0, offset + page, filters)
        filtered = filters is not None and filters.where() is not None
        if not total:
            status = ("No photo matches the filters." if filtered else
                      "**Your library is empty.** Open the *Library* tab and index a photo folder.")
        else:
            status = f"{total} photos{' matching the filters' if filtered else ''}, newest first"
        state = {"mode": "timeline", "shown": [_record(h) for h in hits], "below": [], "total": total,
                 "filters": dataclasses.asdict(filters) if filters else None}
        more = gr.update(visible=len(hits) < total, value=f"Load more ({total - len(hits)} left)")
        return self._gallery(state), status, state, "", "", state["shown"], more

    def more(self, state):
        """Next page of the timeline, or the results below the cutoff."""
        state = state or {}
        if state.get("mode") == "timeline":
            filters = Filters(**state["filters"]) if state.get("filters") else None
            return self._timeline(len(state.get("shown", [])), filters)
        state = {"mode": "search", "shown": state.get("shown", []) + state.get("below", []), "below": []}
        gallery = self._gallery(state)
        return (gallery, f"{len(state['shown'])} photos, below the cutoff too", state, "", "", state["shown"],
                gr.update(visible=False))

    def select_photo(self, state, evt: gr.SelectData):
        """The photo clicked (or shown in the preview): Find similar and Ask act on this one."""
        shown = (state or {}).get("shown", [])
        if evt.index is None or not 0 <= evt.index < len(shown):
            return "", ""
        record = shown[evt.index]
        return record["photo"], _photo_md(record)

    def find_similar(self, selected, after, before, folder, k, state=None):
        try:
            path = self.s.indexed_photo(selected)
        except USER_ERRORS as e:
            return _problem(PHOTOS_OUTPUTS, 1, str(e), {2: state or {}})
        gallery, status, state, _, _, details, more = self.photos("", path, after, before, folder, k, state)
        if isinstance(status, str) and status.startswith("⚠️"):
            return gallery, status, state, gr.update(), gr.update(), details, more
        return (gallery, status.replace("your photo", f"**{Path(path).name}**"), state, path,
                f"Photos like **{Path(path).name}**", details, more)

    def pick_for_chat(self, selected):
        try:
            path = self.s.indexed_photo(selected)
        except USER_ERRORS as e:
            return _problem(3, 2, str(e))
        return gr.Tabs(selected="chat"), path, f"Asking about **{Path(path).name}**"

    # Chat -------------------------------------------------------------------------------------
    def chat(self, message, upload, picked, history, turns, k, answer_threshold, max_context, margin=None,
             rerank_top=None, decompose=None):
        """Answer a message of the conversation (``turns``: app.answer.Turn dicts of the earlier ones)."""
        question = (message or "").strip()
        if not question:
            yield _problem(CHAT_OUTPUTS, 4, "type a question", {5: turns or []})
            return
        history, turns = list(history or []), [Turn.from_json(t) for t in (turns or [])]
        overrides = {"k": int(k), "min_score": float(answer_threshold), "max_context": int(max_context)}
        for name, value, cast in (("context_margin", margin, float), ("rerank_top", rerank_top, int),
                                  ("decompose", decompose, bool)):
            if value is not None:
                overrides[name] = cast(value)
        try:
            image = upload or (self.s.indexed_photo(picked) if picked else None)
        except USER_ERRORS as e:
            yield _problem(CHAT_OUTPUTS, 4, str(e), {5: [t.to_json() for t in turns]})
            return
        history.append({"role": "user", "content": question})
        for thumb, _ in self._thumbs([(image, "")] if image else [], CHAT_THUMBNAIL_SIDE):
            history.append({"role": "user", "content": {"path": thumb}})
        history.append({"role": "assistant", "content": ""})
        result = None
        try:
            for result in self.s.ask(question, image=image, history=turns, **overrides):
                history[-1] = {"role": "assistant", "content": result.text or "…"}
                yield history, gr.update(), {}, "", "Answering…", [t.to_json() for t in turns]
        except USER_ERRORS as e:
            history[-1] = {"role": "assistant", "content": f"⚠️ {e}"}
            yield history, gr.update(), {}, "", f"⚠️ {e}", [t.to_json() for t in turns]
            return
        yield self._chat_done(history, result, image, turns)

    def _photo_messages(self, sources) -> list[dict]:
        return [{"role": "assistant", "content": {"path": thumb}}
                for thumb, _ in self._thumbs([(s.path, "") for s in sources], CHAT_THUMBNAIL_SIDE)]

    def _chat_done(self, history, result, image, turns):
        turns = [*turns, Turn.of(result)]
        details = result.to_json()
        for key in ("sources", "closest"):
            details[key] = [{("photo" if k == "path" else k): v for k, v in s.items()} for s in details[key]]
        if result.kind == "search":
            history[-1] = {"role": "assistant", "content": result.text}
            history += self._photo_messages(result.sources)
            gallery = gr.update(value=self._thumbs([(s.path, Path(s.path).name) for s in result.sources]),
                                label=f"Photos found ({len(result.sources)})")
            done = result.text
        elif result.refused:
            text = result.text + ("\n\n**Closest matches** (not answers: none of them shows it):" if result.closest else "")
            history[-1] = {"role": "assistant", "content": text}
            history += self._photo_messages(result.closest)
            gallery = gr.update(value=self._thumbs([(s.path, f"closest · {Path(s.path).name}") for s in result.closest]),
                                label="Closest matches — not answers")
            done = "Refused: " + ("not found: " + ", ".join(result.missing) if result.missing else "no photo to answer from")
        else:
            cited = [s for s in result.sources if s.cited and s.n is not None]
            history[-1] = {"role": "assistant", "content": result.summary or "(the model gave no answer)"}
            history += self._photo_messages(cited)
            gallery = gr.update(value=self._thumbs([(s.path, f"[{s.n}] {Path(s.path).name}") for s in cited]),
                                label="Cited photos")
            done = "Answered about one photo." if image else f"Answered from {len(result.sources)} photo(s), cited {len(cited)}."
        return history, gallery, details, "", done, [t.to_json() for t in turns]

    def new_chat(self):
        return [], [], gr.update(value=[], label="Cited photos"), {}, "", "New conversation."

    # Settings ---------------------------------------------------------------------------------
    def load_model(self, model):
        """Load another model; the answer and search settings show (and use) its calibrated values."""
        n = 3 + len(SETTINGS_SLIDERS)
        try:
            self.s.switch_model(model)
        except USER_ERRORS as e:
            return _problem(n, 1, str(e))
        except Exception:  # any path that is not a loadable model: one message, whatever the cause
            return _problem(n, 1, not_loadable_message(str(model).strip()))
        stats = self.s.stats()
        note = "" if stats["photos"] else " This model has no index yet: re-index in the Library tab."
        return (stats, f"Loaded `{stats['model']}`.{note}", self.s.model_scope(), *self.settings_values())

    def settings_values(self) -> tuple:
        """The loaded model's settings, in SETTINGS_SLIDERS order."""
        configs = {"search": self.s.search_config, "answer": self.s.answer_config}
        return tuple(getattr(configs[section], name) for section, name in SETTINGS_SLIDERS)

    def stats(self):
        return self.s.stats()


# ------------------------------------------------------------------------------------- layout


def _photos_tab(service: PhotoService):
    examples = service.example_queries()
    with gr.Tab("Photos", id="photos", elem_id="tab-photos"):
        with gr.Row():
            with gr.Column(scale=4):
                query = gr.Textbox(label="Search your photos", placeholder=examples[0] if examples else "",
                                   elem_id="search-text")
                gr.Examples([[e] for e in examples], inputs=[query], label="Try")
                with gr.Row():
                    search_btn = gr.Button("Search", variant="primary", elem_id="search-button")
                    clear_btn = gr.Button("Clear", elem_id="search-clear")
                with gr.Accordion("Filters", open=False, elem_id="search-filters"):
                    with gr.Row():
                        after = gr.Textbox(label="Taken on or after", placeholder="YYYY-MM-DD", elem_id="search-after")
                        before = gr.Textbox(label="Taken before", placeholder="YYYY-MM-DD", elem_id="search-before")
                        folder = gr.Dropdown(label="Folder", choices=[], value=None, allow_custom_value=True,
                                             elem_id="search-folder")
            with gr.Column(scale=1):
                image = gr.Image(label="More like this (optional photo)", type="filepath",
                                 sources=["upload", "clipboard"], height=180, buttons=["fullscreen"],
                                 elem_id="search-image")
        status = gr.Markdown("", elem_id="search-status")
        gallery = gr.Gallery(label="Photos", columns=6, height="auto", object_fit="contain", allow_preview=True,
                             buttons=NO_SHARE, elem_id="search-gallery")
        more = gr.Button("Load more", visible=False, size="sm", elem_id="search-more")
        with gr.Row():
            selected = gr.Textbox(label="Selected photo", interactive=False, scale=3, elem_id="search-selected")
            similar_btn = gr.Button("Find similar", elem_id="similar-button")
            ask_btn = gr.Button("Ask about this photo", elem_id="ask-photo-button")
        selected_md = gr.Markdown("", elem_id="search-selected-info")
        with gr.Accordion("Result details (scores)", open=False):
            details = gr.JSON(label="Results", elem_id="search-results")
        state = gr.State({})
    return SimpleNamespace(**locals())


def _library_tab():
    with gr.Tab("Library", id="library", elem_id="tab-library"):
        with gr.Row():
            folder = gr.Textbox(label="Photo folder (Enter to index)", placeholder="/home/you/Pictures", scale=4,
                                elem_id="library-folder")
            known = gr.Dropdown(label="Indexed folders", choices=[], value=None, scale=2, elem_id="library-known")
        with gr.Row():
            index_btn = gr.Button("Index folder", variant="primary", elem_id="index-button")
            reindex_btn = gr.Button("Re-index all folders", elem_id="reindex-button")
        status = gr.Markdown("", elem_id="library-status")
        counts = gr.Markdown("", elem_id="library-counts")
        skips = gr.Dataframe(headers=["path", "reason", "detail"], value=[], label="Skipped files",
                             interactive=False, elem_id="library-skips")
    return SimpleNamespace(**locals())


def _chat_tab(service: PhotoService):
    examples = service.example_questions()
    with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Ask your photos", height=420, elem_id="chat-history",
                                     feedback_options=None, buttons=["copy", "copy_all"])
                message = gr.Textbox(label="Question", placeholder=examples[0], elem_id="chat-message")
                gr.Examples([[e] for e in examples], inputs=[message], label="Try")
                with gr.Row():
                    send_btn = gr.Button("Ask", variant="primary", elem_id="chat-send")
                    new_btn = gr.Button("New conversation", elem_id="chat-new")
                status = gr.Markdown("", elem_id="chat-status")
            with gr.Column(scale=2):
                upload = gr.Image(label="Ask about this photo (optional)", type="filepath",
                                  sources=["upload", "clipboard"], height=200, buttons=["fullscreen"],
                                  elem_id="chat-image")
                picked = gr.Textbox(label="Photo picked from search", interactive=False, elem_id="chat-picked")
                picked_md = gr.Markdown("")
                clear_pick = gr.Button("Clear picked photo", size="sm")
                cited = gr.Gallery(label="Cited photos", columns=3, fit_columns=False, height=260,
                                   object_fit="contain", buttons=NO_SHARE, elem_id="chat-cited")
                with gr.Accordion("Answer details", open=False):
                    answer_json = gr.JSON(label="Answer", elem_id="chat-answer")
        turns = gr.State([])  # the conversation so far (app.answer.Turn dicts): follow-ups refer to it
    return SimpleNamespace(**locals())


def _settings_tab(service: PhotoService, limits: UIConfig):
    cfg = service.answer_config
    with gr.Tab("Settings", id="settings", elem_id="tab-settings"):
        with gr.Row():
            model_box = gr.Textbox(label="Model (folder or hub id)", value=service.model_name, scale=4,
                                   elem_id="settings-model")
            load_btn = gr.Button("Load model", elem_id="settings-load")
        model_status = gr.Markdown("")
        scope = gr.Markdown(service.model_scope(), elem_id="settings-scope")
        k = gr.Slider(1, limits.max_k, value=service.search_config.k, step=1, label="Results per search (k)",
                      elem_id="settings-k")
        answer_threshold = gr.Slider(0.0, 1.0, value=cfg.min_score, step=0.01,
                                     label="Answer threshold (no photo above it: no answer)",
                                     elem_id="settings-answer-threshold")
        with gr.Row():
            max_context = gr.Slider(1, 6, value=cfg.max_context, step=1,
                                    label="At most this many photos shown to the model per answer",
                                    elem_id="settings-context")
            margin = gr.Slider(0.0, 0.2, value=cfg.context_margin, step=0.005,
                               label="Show photos within this score of the best (context margin)",
                               elem_id="settings-margin")
            rerank_top = gr.Slider(0, limits.max_k, value=cfg.rerank_top, step=1,
                                   label="Re-rank this many of the best photos with the model (0: off)",
                                   elem_id="settings-rerank")
            decompose = gr.Checkbox(value=cfg.decompose, elem_id="settings-decompose",
                                    label='Look for each thing "the photo with ..." names')
        stats_json = gr.JSON(value={}, label="Index statistics", elem_id="settings-stats")
        stats_btn = gr.Button("Refresh statistics", size="sm")
    return SimpleNamespace(**locals())


def build_ui(service: PhotoService, limits: UIConfig | None = None) -> gr.Blocks:
    """The four-tab app, Photos first. Handlers are methods of _Handlers; api_names are the stable API."""
    limits = limits or UIConfig()
    h = _Handlers(service, limits)
    with gr.Blocks(title="CAFe Photos", analytics_enabled=False,
                   delete_cache=(600, int(limits.temp_max_age_s))) as demo:
        gr.Markdown("## CAFe Photos — search and ask about your photos, locally")
        with gr.Tabs(selected="photos") as tabs:
            photos = _photos_tab(service)
            library = _library_tab()
            chat = _chat_tab(service)
            settings = _settings_tab(service, limits)
        timer = gr.Timer(TIMER_S)
        _wire(demo, h, tabs, photos, library, chat, settings, timer)
    return demo


def _wire(demo, h: _Handlers, tabs, photos, library, chat, settings, timer) -> None:
    k = settings.k
    # Live state: every list and count comes from the store on page load and after each index run.
    library_out = [library.status, library.counts, library.skips, library.known, photos.folder, settings.stats_json]
    demo.load(h.library_state, None, library_out, api_name="library_status")
    timer.tick(h.library_tick, None, library_out, show_progress="hidden", api_visibility="private")
    library.index_btn.click(h.index_folder, [library.folder], library_out, api_name="index_folder",
                            concurrency_limit=1, concurrency_id="index", show_progress="minimal")
    library.folder.submit(h.index_folder, [library.folder], library_out, api_visibility="private",
                          concurrency_limit=1, concurrency_id="index", show_progress="minimal")
    library.reindex_btn.click(h.reindex_all, None, library_out, api_name="reindex", concurrency_limit=1,
                              concurrency_id="index", show_progress="minimal")
    library.known.change(lambda v: v or gr.update(), [library.known], [library.folder], api_visibility="private")

    photos_in = [photos.query, photos.image, photos.after, photos.before, photos.folder, k, photos.state]
    photos_out = [photos.gallery, photos.status, photos.state, photos.selected, photos.selected_md, photos.details,
                  photos.more]
    demo.load(h.photos, photos_in, photos_out, api_visibility="private")
    photos.search_btn.click(h.photos, photos_in, photos_out, api_name="search")
    photos.query.submit(h.photos, photos_in, photos_out, api_visibility="private")
    photos.image.change(h.photos, photos_in, photos_out, api_visibility="private")
    photos.clear_btn.click(lambda: ("", None), None, [photos.query, photos.image], api_visibility="private").then(
        h.photos, photos_in, photos_out, api_visibility="private")
    photos.more.click(h.more, [photos.state], photos_out, api_name="more")
    photos.gallery.select(h.select_photo, [photos.state], [photos.selected, photos.selected_md],
                          api_visibility="private")
    photos.similar_btn.click(h.find_similar, [photos.selected, photos.after, photos.before, photos.folder, k,
                                              photos.state], photos_out, api_name="find_similar")
    photos.ask_btn.click(h.pick_for_chat, [photos.selected], [tabs, chat.picked, chat.picked_md],
                         api_name="pick_for_chat")
    chat.clear_pick.click(lambda: ("", ""), None, [chat.picked, chat.picked_md], api_visibility="private")

    chat_in = [chat.message, chat.upload, chat.picked, chat.chatbot, chat.turns, k, settings.answer_threshold,
               settings.max_context, settings.margin, settings.rerank_top, settings.decompose]
    chat_out = [chat.chatbot, chat.cited, chat.answer_json, chat.message, chat.status, chat.turns]
    chat.send_btn.click(h.chat, chat_in, chat_out, api_name="chat")
    chat.message.submit(h.chat, chat_in, chat_out, api_visibility="private")
    chat.new_btn.click(h.new_chat, None, [chat.chatbot, chat.turns, chat.cited, chat.answer_json, chat.message,
                                          chat.status], api_name="new_chat")

    sliders = [settings.k, settings.answer_threshold, settings.max_context, settings.margin, settings.rerank_top,
               settings.decompose]  # SETTINGS_SLIDERS
    settings.load_btn.click(h.load_model, [settings.model_box],
                            [settings.stats_json, settings.model_status, settings.scope, *sliders],
                            api_name="load_model", concurrency_id="index")
    settings.stats_btn.click(h.stats, None, [settings.stats_json], api_name="stats")


# ------------------------------------------------------------------------------------- serving


def make_temp_dir() -> str:
    """The server's private temp folder (uploads, Gradio's cache, thumbnails), mode 0700."""
    return tempfile.mkdtemp(prefix="cafe-photos-ui-")


def launch(service: PhotoService, options: ServeOptions, temp_dir: str, block: bool = True):
    """Build and start the UI; returns (demo, local_url). Blocks until Ctrl-C when `block`."""
    from starlette.middleware import Middleware

    demo = build_ui(service, options.limits)
    demo.queue(default_concurrency_limit=2)
    _, url, share_url = demo.launch(
        server_name=options.host,
        server_port=options.port,
        share=options.share,
        auth=options.auth,
        max_file_size=options.limits.max_file_size,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        run_history=False,  # would store queries in the browser and offer a cloud-bucket upload
        enable_monitoring=False,
        mcp_server=False,
        ssr_mode=False,
        footer_links=[],
        css=CSS,
        app_kwargs={"middleware": [Middleware(Guard, photo_file=service.photo_file, temp_dir=temp_dir,
                                              config=options.limits, auth=options.auth is not None)]},
    )
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
    import os

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
