// The built-in Mles chat client: join a channel, see its history and live
// messages, send plain-text messages, reconnect with back-off.
//
// Protocol (PROTOCOL.md): the first frame is the JSON header
// {"uid":..,"channel":..}; the server replays the channel's history, then
// relays live frames. Header frames of other members arrive as JSON text;
// every other frame is a message. Messages carry no sender, so this client
// sends plain text and marks only its own.
"use strict";

(() => {
  const SUBPROTOCOL = "mles-websocket";
  // Back-off between reconnects: doubles from 1 s up to 30 s, with jitter so
  // that clients dropped together do not return together.
  const BACKOFF_FIRST_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  // A connection that stayed up this long resets the back-off.
  const STABLE_MS = 10000;
  // Close codes after which retrying cannot help (our header or frames are wrong).
  const FATAL = new Set([1002, 1007, 1009]);

  const $ = (id) => document.getElementById(id);
  const ui = {
    joinForm: $("join-form"),
    uid: $("uid"),
    channel: $("channel"),
    join: $("join"),
    leave: $("leave"),
    status: $("status"),
    members: $("members"),
    log: $("log"),
    sendForm: $("send-form"),
    message: $("message"),
    send: $("send"),
  };

  const state = {
    ws: null,
    uid: "",
    channel: "",
    // True while the user wants to be in the channel (reconnect on drops).
    wanted: false,
    // True after the first connection of this join has ended.
    rejoining: false,
    attempt: 0,
    timer: 0,
    openedAt: 0,
    // Connections opened so far (also on <body data-joins>, for tests).
    joins: 0,
    members: new Set(),
  };

  function serverUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/`;
  }

  function setState(name, text) {
    document.body.dataset.state = name;
    ui.status.textContent = text;
    const connected = name === "connected";
    ui.message.disabled = !connected;
    ui.send.disabled = !connected;
    const inChannel = state.wanted;
    ui.uid.disabled = inChannel;
    ui.channel.disabled = inChannel;
    ui.join.hidden = inChannel;
    ui.leave.hidden = !inChannel;
  }

  function append(kind, text, who) {
    const nearBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    const li = document.createElement("li");
    li.className = kind;
    if (who) {
      const span = document.createElement("span");
      span.className = "who";
      span.textContent = who;
      li.append(span);
    }
    li.append(document.createTextNode(text));
    ui.log.append(li);
    if (nearBottom) ui.log.scrollTop = ui.log.scrollHeight;
  }

  function addMember(uid) {
    if (state.members.has(uid)) return;
    state.members.add(uid);
    const li = document.createElement("li");
    li.textContent = uid;
    ui.members.append(li);
  }

  // A header frame: a JSON object with string uid and channel. Anything
  // else, JSON or not, is a message.
  function headerOf(text) {
    if (!text.startsWith("{")) return null;
    try {
      const v = JSON.parse(text);
      if (v && typeof v.uid === "string" && typeof v.channel === "string") return v;
    } catch (_) {
      // Not JSON: a message.
    }
    return null;
  }

  function receive(data) {
    if (typeof data !== "string") {
      append("msg", `[binary message, ${data.byteLength} bytes]`);
      return;
    }
    const header = headerOf(data);
    if (header) {
      addMember(header.uid);
      append("join", `${header.uid} joined`);
    } else {
      append("msg", data);
    }
  }

  function connect() {
    clearTimeout(state.timer);
    setState("connecting", `Connecting to ${state.channel}…`);
    let ws;
    try {
      ws = new WebSocket(serverUrl(), SUBPROTOCOL);
    } catch (e) {
      scheduleReconnect(`Cannot connect: ${e.message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onopen = () => {
      if (state.ws !== ws) return;
      state.openedAt = Date.now();
      state.joins += 1;
      document.body.dataset.joins = String(state.joins);
      // The history comes again with every join: start the view afresh.
      ui.log.replaceChildren();
      ui.members.replaceChildren();
      state.members.clear();
      ws.send(JSON.stringify({ uid: state.uid, channel: state.channel }));
      addMember(state.uid);
      setState("connected", `Joined ${state.channel} as ${state.uid}.`);
      // Focus the message box after a join, not when a reconnect happens
      // while the user is elsewhere on the page.
      if (document.activeElement === document.body) ui.message.focus();
    };
    ws.onmessage = (ev) => {
      if (state.ws === ws) receive(ev.data);
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      if (!state.wanted) return;
      const why = ev.reason ? `${ev.reason} (${ev.code})` : `code ${ev.code}`;
      // 1008 on the first connection of a join is a refusal (name taken,
      // auth, size) that retrying cannot fix; on a rejoin it may be our own
      // half-open earlier connection, which the server probes and drops.
      if (FATAL.has(ev.code) || (ev.code === 1008 && !state.rejoining)) {
        state.wanted = false;
        setState("closed", `The server closed the connection: ${why}.`);
        return;
      }
      state.rejoining = true;
      if (state.openedAt && Date.now() - state.openedAt >= STABLE_MS) state.attempt = 0;
      state.openedAt = 0;
      scheduleReconnect(`Connection lost: ${why}.`);
    };
    // An error is always followed by a close event, which handles it.
    ws.onerror = () => {};
  }

  function scheduleReconnect(why) {
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** state.attempt);
    const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
    state.attempt += 1;
    setState("waiting", `${why} Reconnecting in ${Math.ceil(delay / 1000)} s…`);
    state.timer = setTimeout(connect, delay);
  }

  function leave() {
    state.wanted = false;
    clearTimeout(state.timer);
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000, "left");
    setState("idle", "Not connected.");
  }

  ui.joinForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const uid = ui.uid.value.trim();
    const channel = ui.channel.value.trim();
    if (!uid || !channel) return;
    state.uid = uid;
    state.channel = channel;
    state.wanted = true;
    state.rejoining = false;
    state.attempt = 0;
    try {
      localStorage.setItem("mles.uid", uid);
      localStorage.setItem("mles.channel", channel);
    } catch (_) {
      // Storage may be off (private mode); remembering is only a convenience.
    }
    connect();
  });

  ui.leave.addEventListener("click", leave);

  ui.sendForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.message.value;
    const ws = state.ws;
    if (!text.trim() || !ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(text);
    // The server never echoes a frame back to its sender.
    append("mine", text, "You:");
    ui.message.value = "";
    ui.message.focus();
  });

  // Back online: do not wait out the back-off.
  window.addEventListener("online", () => {
    if (state.wanted && !state.ws) connect();
  });

  try {
    ui.uid.value = localStorage.getItem("mles.uid") || "";
    ui.channel.value = localStorage.getItem("mles.channel") || "";
  } catch (_) {
    // See above.
  }
  setState("idle", "Not connected.");
})();
