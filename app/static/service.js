// What both pages share in talking to the service: the error whose message a person can act on,
// and how an answer becomes its JSON or that error. Loaded (deferred) before each page's script.
// Plain browser JavaScript, no build step and no third-party code, so the pages work offline.
"use strict";

window.DigitsService = (() => {
  /** An error answer from the service, carrying the message meant for a person. */
  class ServiceError extends Error {
    constructor(message, code, status) {
      super(message);
      this.name = "ServiceError";
      this.code = code;
      this.status = status;
    }
  }

  /**
   * The answer's JSON, or a ServiceError: the service's own message and code for an error it
   * answered, else the status followed by `advice` (a proxy's HTML error page, say), and
   * `bad_answer` for a success that is not JSON.
   */
  async function readAnswer(response, advice = "") {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      // Not JSON: the generic messages below.
    }
    if (!response.ok) {
      const error = parsed && parsed.error;
      const message =
        error && typeof error.message === "string"
          ? error.message
          : `The service answered ${response.status} ${response.statusText}.${advice ? ` ${advice}` : ""}`;
      throw new ServiceError(message, (error && error.code) || "http_error", response.status);
    }
    if (parsed === null) {
      throw new ServiceError("The service sent an answer this page cannot read.", "bad_answer", response.status);
    }
    return parsed;
  }

  return { ServiceError, readAnswer };
})();
