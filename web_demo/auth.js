// How a page authenticates without ever holding the API key: before each connection it
// gets a short-lived client secret (`ek_...`) and sends it as `Authorization: Bearer`
// (HTTP) or as the `openai-insecure-api-key.<secret>` WebSocket subprotocol.
// The secret comes from `window.RTMEDIA_CLIENT_SECRET_URL` (set it in the page) when the
// page belongs to your own site: your backend checks its user, calls
// POST /v1/realtime/client_secrets with the API key and returns the answer. By default it
// comes from this media server, which mints one for its own pages when no key is set or
// with RTMEDIA_DEMO_PAGES_MINT=1 (a demo setting: see README "Security").
"use strict";

window.rtmediaAuth = {
  url: window.RTMEDIA_CLIENT_SECRET_URL || "/v1/realtime/client_secrets",
  expiresAt: null,

  async secret() {
    const resp = await fetch(this.url, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
      credentials: "same-origin",
    });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      if (resp.status === 401) {
        throw new Error("this server needs a key, and pages never hold it: serve the page " +
          "from a site whose backend mints a client secret (RTMEDIA_CLIENT_SECRET_URL), or " +
          "start the server with RTMEDIA_DEMO_PAGES_MINT=1 for a demo");
      }
      throw new Error((body.error && body.error.message) || `client secret: ${resp.status}`);
    }
    const value = body.value || (body.client_secret && body.client_secret.value);
    if (!value) throw new Error("client secret: no value in the answer");
    this.expiresAt = body.expires_at || null;
    return value;
  },

  headers(secret) { return { Authorization: `Bearer ${secret}` }; },

  protocols(secret) { return ["realtime", `openai-insecure-api-key.${secret}`]; },
};
