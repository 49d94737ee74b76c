// First-time-user chat page for tim-rs: a small TIM client speaking the JSON form of the
// client protocol (WebSocket /tim, HTTP POST /tim2). No framework, no build step.
'use strict';

// ---- Protocol constants (tim-protocol.md §3) ----

const FRAME = {
  ACK: 12,
  PING: 13,
  REGISTER: 14,
  AUTH: 16,
  OFFLINE_MSG: 17,
  OFFLINE_MSG_END: 18,
  BROAD_PRESENCE: 19,
  PULL_MESSAGE: 21,
  BUSINESS: 41,
  NODES: 42,
  MESSAGE: 90,
  PRESENCE: 91,
};
// Client → server the high bit of byte 0 marks a JSON body; server → client it asks for an
// ack and 4 bytes of ack id follow (§2.1, §2.3).
const HIGH_BIT = 0x80;
// TimAck.timType of a forced logout (admin ban).
const FORCED_LOGOUT = 20;

const RTYPE = { ROSTER: 1, USERROOM: 2, ADDROSTER: 4, NEWROOM: 8, ADDROOM: 9, PULLROOM: 12 };
const BN = {
  ADDROSTER: 4, FRIEND: 5, REMOVEROSTER: 6, BLOCKROSTER: 7,
  ADDROOM: 9, PASSROOM: 10, NOPASSROOM: 11, PULLROOM: 12, KICKROOM: 13,
};
const NTYPE = { ROSTER: 1, USERROOM: 2, ROOMINFO: 5 };
const MS_TYPE = { USER: 2, GROUP: 3 };
const OD_TYPE = { NORMAL: 1, REVOKE: 2, BURN: 3, BUSINESS: 4 };
const GTYPE_OPEN = 2;
// Presence handshake (a client convention, the server does not read it): a friend who gets
// SUB_ASK answers with SUB_REPLY, so both sides learn that the other is online.
const SUB_ASK = 1;
const SUB_REPLY = 2;

// The server closes sessions that stay silent past ping_timeout (600 s by default).
const PING_EVERY_MS = 15000;
const HISTORY_PAGE = 20;
// How long a new login waits for the previous socket's close handshake: a session still
// open on the server counts against the device limit (error 4111).
const CLOSE_WAIT_MS = 3000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const $ = (id) => document.getElementById(id);

// ---- State of the logged-in session ----

let state = freshState();
// Resolves when the previous socket has finished closing.
let previousClose = Promise.resolve();

function freshState() {
  return {
    ws: null,
    me: null, // own node once the login is acked
    loginPending: false,
    pinger: null,
    rosterLoaded: false,
    friends: new Set(),
    online: new Map(), // node → whether its last presence said online
    pendingAsks: new Set(), // presence asks from users not (yet) in the roster
    requests: new Map(), // node → request text
    groups: new Map(), // group node → topic ('' until known)
    pendingTopics: [], // topics of NEWROOM requests awaiting their ack, in order
    unread: new Map(), // conversation node → count
    seenMids: new Set(), // mids already rendered or counted
    open: null, // { kind: 'user' | 'group', node, scrollOnHistory }
  };
}

// ---- Frames ----

function encodeFrame(type, body) {
  const json = body === undefined ? new Uint8Array(0) : encoder.encode(JSON.stringify(body));
  const frame = new Uint8Array(1 + json.length);
  frame[0] = type | HIGH_BIT;
  frame.set(json, 1);
  return frame;
}

function parseFrame(bytes) {
  const wantsAck = (bytes[0] & HIGH_BIT) !== 0;
  return {
    type: bytes[0] & 0x7f,
    ackId: wantsAck ? bytes.slice(1, 5) : null,
    body: bytes.subarray(wantsAck ? 5 : 1),
  };
}

function decodeBody(body) {
  return body.length === 0 ? null : JSON.parse(decoder.decode(body));
}

function send(type, body) {
  const ws = state.ws;
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(encodeFrame(type, body));
}

// The ack echoes the 4 id bytes verbatim; like timjs, the JSON bit is set (the server ignores it).
function sendAck(ackId) {
  const frame = new Uint8Array(5);
  frame[0] = FRAME.ACK | HIGH_BIT;
  frame.set(ackId, 1);
  state.ws.send(frame);
}

function business(req) {
  send(FRAME.BUSINESS, req);
}

// ---- Connection ----

function wsUrl() {
  return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/tim';
}

function connect(name, pwd) {
  const ws = new WebSocket(wsUrl());
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  state.loginPending = true;
  let opened = false;
  // The server closes sockets that do not log in within a few seconds: log in on open.
  ws.addEventListener('open', () => {
    opened = true;
    send(FRAME.AUTH, { name, pwd, resource: 'web' });
  });
  // Events of a socket we already let go of are ignored.
  ws.addEventListener('message', (event) => {
    if (ws === state.ws) onSocketMessage(event.data);
  });
  ws.addEventListener('close', () => {
    if (ws === state.ws) onSocketClosed(opened);
  });
}

// Closes the session's socket and remembers when the close handshake is over.
function dropSocket() {
  const ws = state.ws;
  state.ws = null;
  if (!ws) return;
  if (ws.readyState === WebSocket.CLOSED) {
    previousClose = Promise.resolve();
    return;
  }
  previousClose = new Promise((resolve) => {
    ws.addEventListener('close', resolve);
    setTimeout(resolve, CLOSE_WAIT_MS);
  });
  ws.close(1000);
}

function onSocketMessage(data) {
  const bytes = typeof data === 'string' ? encoder.encode(data) : new Uint8Array(data);
  if (bytes.length === 0) return;
  const frame = parseFrame(bytes);
  // Ack before handling: an unacked push is resent and then stored offline again.
  if (frame.ackId) sendAck(frame.ackId);
  // Streams and big data (94–97) are not used by this page.
  if (frame.type >= 94 && frame.type <= 97) return;
  let body;
  try {
    body = decodeBody(frame.body);
  } catch (err) {
    console.warn('undecodable frame', frame.type, err);
    return;
  }
  dispatch(frame.type, body);
}

function dispatch(type, body) {
  switch (type) {
    case FRAME.ACK: return onAck(body);
    case FRAME.OFFLINE_MSG: return messagesOf(body).forEach(onMessage);
    case FRAME.PULL_MESSAGE: return onHistory(messagesOf(body));
    case FRAME.NODES: return onNodes(body);
    case FRAME.MESSAGE: return onMessage(body);
    case FRAME.PRESENCE: return onPresence(body);
    default: return undefined; // ping replies (13), end of offline messages (18)
  }
}

function messagesOf(list) {
  return (list && list.messageList) || [];
}

function onSocketClosed(opened) {
  const wasOnline = state.me !== null;
  const wasLoggingIn = state.loginPending;
  endSession();
  if (wasOnline) {
    showNotice('Disconnected from the server.');
  } else if (wasLoggingIn && !$('login-error').textContent) {
    $('login-error').textContent = opened ? 'connection closed' : 'could not connect to the server';
  }
}

// Back to the login view, with nothing left of the session.
function endSession() {
  clearInterval(state.pinger);
  dropSocket();
  state = freshState();
  $('me').textContent = '';
  $('status').textContent = 'offline';
  $('chat-with').textContent = '';
  $('chat-kind').textContent = '';
  for (const id of ['requests', 'friends', 'groups', 'messages']) $(id).replaceChildren();
  showMainView(false);
}

function showMainView(loggedIn) {
  $('auth-view').hidden = loggedIn;
  $('main-view').hidden = !loggedIn;
}

// ---- Acks ----

function onAck(ack) {
  if (!ack) return;
  if (ack.timType === FRAME.AUTH) return onLoginAck(ack);
  if (ack.timType === FORCED_LOGOUT) {
    endSession();
    showNotice('You were logged out by the server.');
    return;
  }
  // A NEWROOM answer, ok or not, settles the oldest pending topic.
  const topic = ack.timType === FRAME.BUSINESS && ack.t === RTYPE.NEWROOM ? state.pendingTopics.shift() : undefined;
  if (!ack.ok) {
    showNotice(`${operationName(ack)} failed: ${errorText(ack.error)}`);
    return;
  }
  if (ack.timType !== FRAME.BUSINESS) return;
  if (ack.t === RTYPE.NEWROOM && ack.n) {
    state.groups.set(ack.n, topic || '');
    renderGroups();
    loadGroups();
    openConversation('group', ack.n);
  } else if (ack.t === RTYPE.PULLROOM) {
    showActivity(`Added ${ack.n2} to group ${groupLabel(ack.n)}.`);
  }
}

function onLoginAck(ack) {
  if (state.me !== null) return; // a repeated login on a live session tells nothing new
  state.loginPending = false;
  if (!ack.ok) {
    $('login-error').textContent = errorText(ack.error);
    $('status').textContent = 'offline';
    dropSocket();
    return;
  }
  state.me = ack.n;
  $('me').textContent = ack.n;
  $('status').textContent = 'online';
  $('login-password').value = '';
  showMainView(true);
  state.pinger = setInterval(() => send(FRAME.PING), PING_EVERY_MS);
  // Nothing is pushed after a login unless asked for.
  send(FRAME.OFFLINE_MSG);
  send(FRAME.BROAD_PRESENCE, { subStatus: SUB_ASK, status: 'online' });
  loadRoster();
  loadGroups();
}

function errorText(error) {
  if (!error) return 'unknown error';
  return `${error.code ?? ''} ${error.info ?? ''}`.trim();
}

const OPERATION_NAMES = {
  [FRAME.BUSINESS]: 'Request',
  [FRAME.NODES]: 'Profile request',
  [FRAME.PULL_MESSAGE]: 'History',
  [FRAME.MESSAGE]: 'Message',
  [FRAME.PRESENCE]: 'Presence',
  [FRAME.BROAD_PRESENCE]: 'Presence',
};
const BUSINESS_NAMES = {
  [RTYPE.ADDROSTER]: 'Friend request',
  [RTYPE.NEWROOM]: 'Creating the group',
  [RTYPE.ADDROOM]: 'Joining the group',
  [RTYPE.PULLROOM]: 'Adding to the group',
};

function operationName(ack) {
  return (ack.timType === FRAME.BUSINESS && BUSINESS_NAMES[ack.t]) || OPERATION_NAMES[ack.timType] || 'Request';
}

// ---- Node lists (roster, groups, group profiles) ----

function loadRoster() {
  business({ rtype: RTYPE.ROSTER });
}

function loadGroups() {
  business({ rtype: RTYPE.USERROOM });
}

function onNodes(nodes) {
  if (!nodes) return;
  if (nodes.ntype === NTYPE.ROSTER) onRoster(nodes.nodelist || []);
  else if (nodes.ntype === NTYPE.USERROOM) onGroupList(nodes.nodelist || []);
  else if (nodes.ntype === NTYPE.ROOMINFO) onGroupInfo(nodes.roommap || {});
}

function onRoster(nodes) {
  const fresh = nodes.filter((node) => !state.friends.has(node));
  const firstLoad = !state.rosterLoaded;
  state.rosterLoaded = true;
  state.friends = new Set(nodes);
  for (const node of nodes) state.requests.delete(node);
  // Friends of the first load got our broadcast; a new friend is asked directly.
  if (!firstLoad) fresh.forEach(askPresence);
  for (const node of [...state.pendingAsks]) {
    if (state.friends.has(node)) answerPresence(node);
  }
  renderRequests();
  renderFriends();
}

function onGroupList(nodes) {
  const groups = new Map(nodes.map((node) => [node, state.groups.get(node) || '']));
  state.groups = groups;
  renderGroups();
  const unnamed = nodes.filter((node) => !groups.get(node));
  if (unnamed.length) send(FRAME.NODES, { ntype: NTYPE.ROOMINFO, nodelist: unnamed });
}

function onGroupInfo(roommap) {
  for (const [node, room] of Object.entries(roommap)) {
    if (state.groups.has(node) && room && room.topic) state.groups.set(node, room.topic);
  }
  renderGroups();
}

function groupLabel(node) {
  return state.groups.get(node) || node;
}

// ---- Presence ----

function askPresence(node) {
  send(FRAME.PRESENCE, { toTid: { node }, subStatus: SUB_ASK, status: 'online' });
}

function answerPresence(node) {
  state.pendingAsks.delete(node);
  send(FRAME.PRESENCE, { toTid: { node }, subStatus: SUB_REPLY, status: 'online' });
}

function onPresence(presence) {
  const from = presence && presence.fromTid && presence.fromTid.node;
  if (!from || from === state.me) return;
  // The server marks a user's last disconnect with offline: true; any other presence means online.
  const online = presence.offline !== true;
  state.online.set(from, online);
  const item = findItem('friends', from);
  if (item) item.className = friendClass(from);
  if (!online || presence.subStatus !== SUB_ASK) return;
  // Only friends learn that we are online; an ask may arrive before the roster lists its sender.
  if (state.friends.has(from)) answerPresence(from);
  else state.pendingAsks.add(from);
}

// ---- Messages ----

function onMessage(msg) {
  if (!msg) return;
  switch (msg.odType) {
    case OD_TYPE.NORMAL: return onChatMessage(msg);
    case OD_TYPE.BUSINESS: return onNotification(msg);
    case OD_TYPE.REVOKE:
    case OD_TYPE.BURN: return removeMessage(msg.mid);
    default: return undefined;
  }
}

// The conversation a message belongs to: its group, or the other side of a 1:1 chat.
function conversationOf(msg) {
  if (msg.msType === MS_TYPE.GROUP && msg.roomTid) return { kind: 'group', node: msg.roomTid.node };
  const from = msg.fromTid && msg.fromTid.node;
  const to = msg.toTid && msg.toTid.node;
  const peer = from === state.me ? to : from;
  return peer ? { kind: 'user', node: peer } : null;
}

function isOpen(conv) {
  return state.open !== null && state.open.kind === conv.kind && state.open.node === conv.node;
}

function onChatMessage(msg) {
  const conv = conversationOf(msg);
  if (!conv) return;
  if (isOpen(conv)) {
    renderMessage(msg);
    return;
  }
  // Own messages (echoes, other devices) and redeliveries are not news.
  const mine = msg.fromTid && msg.fromTid.node === state.me;
  if (mine || state.seenMids.has(msg.mid)) return;
  if (msg.mid != null) state.seenMids.add(msg.mid);
  state.unread.set(conv.node, (state.unread.get(conv.node) || 0) + 1);
  renderBadge(conv.node);
}

function onHistory(messages) {
  if (!state.open) return;
  for (const msg of messages) {
    const conv = conversationOf(msg);
    if (conv && isOpen(conv)) renderMessage(msg);
  }
  // The first page of a conversation ends scrolled to its newest message.
  if (state.open.scrollOnHistory) {
    state.open.scrollOnHistory = false;
    const list = $('messages');
    list.scrollTop = list.scrollHeight;
  }
}

function onNotification(msg) {
  const from = msg.fromTid && msg.fromTid.node;
  const group = msg.roomTid && msg.roomTid.node;
  switch (msg.bnType) {
    case BN.ADDROSTER:
      if (from && !state.friends.has(from)) {
        state.requests.set(from, msg.dataString || '');
        renderRequests();
      }
      return;
    case BN.FRIEND:
    case BN.REMOVEROSTER:
    case BN.BLOCKROSTER:
      loadRoster();
      return;
    case BN.PASSROOM:
    case BN.PULLROOM:
      showActivity(`You are now in group ${group}.`);
      loadGroups();
      return;
    case BN.KICKROOM:
    case BN.NOPASSROOM:
      loadGroups();
      return;
    case BN.ADDROOM:
      showActivity(`${from} asks to join group ${groupLabel(group)}: add them with "Add".`);
      return;
    default:
      return;
  }
}

// ---- Conversations ----

function openConversation(kind, node) {
  state.open = { kind, node, scrollOnHistory: true };
  $('chat-kind').textContent = kind === 'group' ? `Group ${groupLabel(node)}` : 'Chat with';
  $('chat-with').textContent = node;
  $('messages').replaceChildren();
  state.unread.delete(node);
  renderFriends();
  renderGroups();
  pullHistory(0);
  $('message-input').focus();
}

// `upto` is the newest mid wanted (inclusive), 0 for the newest of all.
function pullHistory(upto) {
  const { kind, node } = state.open;
  send(FRAME.PULL_MESSAGE, { rtype: kind === 'group' ? 2 : 1, node, reqInt: upto, reqInt2: HISTORY_PAGE });
}

function loadOlder() {
  if (!state.open) return;
  const first = $('messages').firstElementChild;
  if (!first) return pullHistory(0);
  const oldest = Number(first.dataset.mid);
  if (oldest > 1) pullHistory(oldest - 1);
}

function sendMessage() {
  const input = $('message-input');
  const text = input.value;
  if (!text.trim()) return;
  if (!state.open) {
    showNotice('Open a conversation first: click a friend or a group.');
    return;
  }
  const { kind, node } = state.open;
  // The server echoes the stored message (with its mid); it is rendered from that echo.
  const msg = kind === 'group'
    ? { msType: MS_TYPE.GROUP, odType: OD_TYPE.NORMAL, roomTid: { node }, dataString: text }
    : { msType: MS_TYPE.USER, odType: OD_TYPE.NORMAL, toTid: { node }, dataString: text };
  send(FRAME.MESSAGE, msg);
  input.value = '';
}

// ---- Rendering ----

function renderMessage(msg) {
  const list = $('messages');
  if (msg.mid != null) {
    if (list.querySelector(`.msg[data-mid="${CSS.escape(String(msg.mid))}"]`)) return;
    state.seenMids.add(msg.mid);
  }
  const from = (msg.fromTid && msg.fromTid.node) || '';
  const div = document.createElement('div');
  div.className = 'msg';
  div.dataset.mid = msg.mid != null ? String(msg.mid) : '';
  div.dataset.from = from;
  // Sender and time are shown by CSS from these attributes, so textContent is the text alone.
  div.dataset.who = from === state.me ? 'you' : from;
  div.dataset.time = formatTime(msg.timestamp);
  if (from === state.me) div.dataset.own = '';
  div.textContent = msg.dataString || '';
  insertByMid(list, div, msg.mid);
}

// Keeps the list ordered by mid, oldest at the top; a message at the bottom scrolls into view.
function insertByMid(list, div, mid) {
  let before = list.lastElementChild;
  while (before && mid != null && Number(before.dataset.mid) > mid) before = before.previousElementSibling;
  list.insertBefore(div, before ? before.nextSibling : list.firstChild);
  if (!div.nextSibling) list.scrollTop = list.scrollHeight;
}

function removeMessage(mid) {
  if (mid == null) return;
  const div = $('messages').querySelector(`.msg[data-mid="${CSS.escape(String(mid))}"]`);
  if (div) div.remove();
}

// Timestamps are nanoseconds since the epoch.
function formatTime(ns) {
  const date = typeof ns === 'number' ? new Date(ns / 1e6) : new Date();
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function friendClass(node) {
  return 'friend ' + (state.online.get(node) ? 'online' : 'offline');
}

function renderFriends() {
  const items = [...state.friends].sort().map((node) => contactItem(node, friendClass(node), node));
  $('friends').replaceChildren(...items);
}

function renderGroups() {
  const items = [...state.groups.keys()].map((node) => contactItem(node, 'group', groupLabel(node)));
  $('groups').replaceChildren(...items);
}

function contactItem(node, className, label) {
  const li = document.createElement('li');
  li.dataset.node = node;
  li.className = className;
  li.tabIndex = 0;
  li.title = node;
  if (state.open && state.open.node === node) li.setAttribute('aria-current', 'true');
  li.append(textSpan('name', label));
  const count = state.unread.get(node);
  if (count) li.append(textSpan('unread', String(count)));
  return li;
}

function renderBadge(node) {
  for (const listId of ['friends', 'groups']) {
    const li = findItem(listId, node);
    if (!li) continue;
    const count = state.unread.get(node) || 0;
    let badge = li.querySelector('.unread');
    if (!count) {
      if (badge) badge.remove();
    } else {
      if (!badge) badge = li.appendChild(textSpan('unread', ''));
      badge.textContent = String(count);
    }
  }
}

function renderRequests() {
  const items = [...state.requests].map(([node, text]) => {
    const li = document.createElement('li');
    li.dataset.node = node;
    li.append(textSpan('name', node));
    if (text) li.append(textSpan('request-text', text));
    const accept = document.createElement('button');
    accept.type = 'button';
    accept.className = 'accept';
    accept.textContent = 'Accept';
    li.append(accept);
    return li;
  });
  $('requests').replaceChildren(...items);
}

function textSpan(className, text) {
  const span = document.createElement('span');
  span.className = className;
  span.textContent = text;
  return span;
}

function findItem(listId, node) {
  return $(listId).querySelector(`li[data-node="${CSS.escape(node)}"]`);
}

function showNotice(text) {
  $('notice').textContent = text;
}

function showActivity(text) {
  $('activity').textContent = text;
}

// ---- User actions ----

async function register() {
  const name = $('reg-name').value.trim();
  const pwd = $('reg-password').value;
  const result = $('reg-result');
  if (!name || !pwd) {
    result.textContent = 'Enter a name and a password.';
    return;
  }
  result.textContent = 'registering…';
  try {
    const reply = await fetch('/tim2', { method: 'POST', body: encodeFrame(FRAME.REGISTER, { name, pwd }) });
    const bytes = new Uint8Array(await reply.arrayBuffer());
    // The answer is a frame too: 0x0C, then the TimAck.
    if (bytes[0] !== FRAME.ACK) throw new Error(`HTTP ${reply.status}`);
    const ack = decodeBody(bytes.subarray(1));
    if (ack.ok) {
      result.textContent = `registered: ${ack.n}`;
      $('login-name').value = name;
    } else {
      result.textContent = `error ${errorText(ack.error)}`;
    }
  } catch (err) {
    result.textContent = `error: ${err.message}`;
  }
}

async function login() {
  const name = $('login-name').value.trim();
  const pwd = $('login-password').value;
  const error = $('login-error');
  if (!name || !pwd) {
    error.textContent = 'Enter your name and password.';
    return;
  }
  if (state.ws || state.loginPending) return; // a login is already under way
  error.textContent = '';
  showNotice('');
  showActivity('');
  $('status').textContent = 'connecting';
  state.loginPending = true;
  await previousClose;
  connect(name, pwd);
}

function logout() {
  endSession();
  showNotice('');
  showActivity('');
}

function addFriend() {
  const node = $('friend-node').value.trim();
  if (!node) return;
  business({ rtype: RTYPE.ADDROSTER, node, reqStr: 'hi' });
  // If they had asked us already, we are friends now; nothing else would tell us.
  loadRoster();
  $('friend-node').value = '';
  showActivity(`Friend request sent to ${node}.`);
}

function acceptRequest(node) {
  business({ rtype: RTYPE.ADDROSTER, node, reqStr: 'ok' });
  state.requests.delete(node);
  renderRequests();
  loadRoster();
}

function createGroup() {
  const topic = $('group-topic').value.trim();
  if (!topic) return;
  state.pendingTopics.push(topic);
  business({ rtype: RTYPE.NEWROOM, node: topic, reqInt: GTYPE_OPEN });
  $('group-topic').value = '';
}

function joinGroup() {
  const node = $('group-join-node').value.trim();
  if (!node) return;
  business({ rtype: RTYPE.ADDROOM, node, reqStr: 'join' });
  loadGroups();
  $('group-join-node').value = '';
}

function addToGroup() {
  const user = $('group-user').value.trim();
  if (!user) return;
  if (!state.open || state.open.kind !== 'group') {
    showNotice('Open a group first, then add a user to it.');
    return;
  }
  business({ rtype: RTYPE.PULLROOM, node: state.open.node, node2: user });
  $('group-user').value = '';
}

// ---- Wiring (no inline handlers: the page's CSP forbids them) ----

function onSubmit(formId, action) {
  $(formId).addEventListener('submit', (event) => {
    event.preventDefault();
    action();
  });
}

// Clicking (or Enter on) a list item opens its conversation.
function onContactPick(listId, kind) {
  const pick = (event) => {
    const li = event.target.closest('li[data-node]');
    if (li) openConversation(kind, li.dataset.node);
  };
  $(listId).addEventListener('click', pick);
  $(listId).addEventListener('keydown', (event) => {
    if (event.key === 'Enter') pick(event);
  });
}

function init() {
  onSubmit('login-form', login);
  onSubmit('reg-form', register);
  onSubmit('friend-form', addFriend);
  onSubmit('group-create-form', createGroup);
  onSubmit('group-join-form', joinGroup);
  onSubmit('group-add-form', addToGroup);
  onSubmit('composer', sendMessage);
  onContactPick('friends', 'user');
  onContactPick('groups', 'group');
  $('requests').addEventListener('click', (event) => {
    const button = event.target.closest('button.accept');
    if (button) acceptRequest(button.closest('li[data-node]').dataset.node);
  });
  $('logout').addEventListener('click', logout);
  $('history-more').addEventListener('click', loadOlder);
  $('notice').addEventListener('click', () => showNotice(''));
}

init();
