// Running as a Telegram Mini App, without loading telegram-web-app.js from telegram.org.
//
// Telegram opens the page with launch parameters in the URL fragment: `tgWebAppData` (the
// signed initData, sent to the gateway to sign in), `tgWebAppThemeParams` (JSON colours) and
// `tgWebAppPlatform`/`tgWebAppVersion`. Methods go to the client the ways core.telegram.org/api/web-events
// lists: `window.TelegramWebviewProxy.postEvent` (mobile), `window.external.notify` (desktop)
// or `postMessage` to the parent frame (Telegram Web). Events come back through
// `window.Telegram.WebView.receiveEvent` (mobile), `window.TelegramGameProxy.receiveEvent`
// (desktop) or `message` events (web), as core.telegram.org/api/bots/webapps describes.

const STORE = 'cocoon.tg.launch';

export interface Launch {
  initData: string;
  platform: string;
  theme: Record<string, string>;
}

function readHash(): URLSearchParams | null {
  const hash = location.hash.startsWith('#') ? location.hash.slice(1) : '';
  const p = new URLSearchParams(hash);
  return p.has('tgWebAppData') ? p : null;
}

/** The launch parameters, if Telegram opened this page (kept for reloads within the tab). */
export function launch(): Launch | null {
  const p = readHash();
  if (p) {
    let theme: Record<string, string> = {};
    try {
      theme = JSON.parse(p.get('tgWebAppThemeParams') ?? '{}');
    } catch {
      /* no theme */
    }
    const l = { initData: p.get('tgWebAppData') ?? '', platform: p.get('tgWebAppPlatform') ?? 'unknown', theme };
    sessionStorage.setItem(STORE, JSON.stringify(l));
    // The fragment holds the signed initData: keep it out of the address bar and history.
    history.replaceState(null, '', location.pathname + location.search);
    return l;
  }
  const stored = sessionStorage.getItem(STORE);
  return stored ? (JSON.parse(stored) as Launch) : null;
}

export function postEvent(eventType: string, eventData: unknown = {}): void {
  const w = window as any;
  const data = JSON.stringify(eventData);
  try {
    if (w.TelegramWebviewProxy?.postEvent) {
      w.TelegramWebviewProxy.postEvent(eventType, data);
    } else if (w.external?.notify) {
      w.external.notify(JSON.stringify({ eventType, eventData }));
    } else if (window.parent !== window) {
      window.parent.postMessage(JSON.stringify({ eventType, eventData }), '*');
    }
  } catch {
    /* not inside Telegram */
  }
}

/** Applies Telegram's theme colours as `--tg-theme-*` CSS variables. */
export function applyTheme(theme: Record<string, string>): void {
  const root = document.documentElement;
  for (const [k, v] of Object.entries(theme)) {
    if (/^#[0-9a-fA-F]{3,8}$/.test(v)) root.style.setProperty(`--tg-theme-${k.replace(/_/g, '-')}`, v);
  }
  root.classList.add('in-telegram');
}

/** Wires Telegram's events (theme changes) and tells the client the app is ready. */
export function start(l: Launch): void {
  applyTheme(l.theme);
  const receive = (eventType: string, eventData: any) => {
    if (eventType === 'theme_changed' && eventData?.theme_params) applyTheme(eventData.theme_params);
  };
  const w = window as any;
  w.Telegram = w.Telegram ?? {};
  w.Telegram.WebView = { ...(w.Telegram.WebView ?? {}), receiveEvent: receive };
  w.TelegramGameProxy = { ...(w.TelegramGameProxy ?? {}), receiveEvent: receive };
  window.addEventListener('message', (e) => {
    if (e.source !== window.parent || typeof e.data !== 'string') return;
    try {
      const m = JSON.parse(e.data);
      if (m?.eventType) receive(m.eventType, m.eventData);
    } catch {
      /* not a Telegram event */
    }
  });
  postEvent('web_app_ready');
  postEvent('web_app_expand');
  postEvent('web_app_request_theme');
}

/** Opens a link outside the Mini App (wallet universal links). */
export function openLink(url: string): void {
  if (sessionStorage.getItem(STORE)) postEvent('web_app_open_link', { url });
  else window.open(url, '_blank', 'noopener');
}
