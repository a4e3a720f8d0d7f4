// The playground's entry point: sign-in (a token kept in localStorage, checked against
// /v1/models), the two tabs, and handing the endpoints to each tab.
import { ApiError, forgetToken, listModels, savedToken, saveToken } from "./api.js";
import { ChatTab } from "./chat.js";
import { ImagesTab } from "./images.js";

const $ = (id) => document.getElementById(id);

function showSignIn(message = "") {
  $("sign-in").hidden = false;
  $("tabs").hidden = true;
  $("sign-out").hidden = true;
  $("panel-chat").hidden = true;
  $("panel-images").hidden = true;
  $("sign-in-error").textContent = message;
  $("token").focus();
}

const onAuthError = (message) => {
  forgetToken();
  showSignIn(`Your token was refused: ${message}`);
};
const chat = new ChatTab(onAuthError);
const images = new ImagesTab(onAuthError);

const tabs = [
  { tab: $("tab-chat"), panel: $("panel-chat") },
  { tab: $("tab-images"), panel: $("panel-images") },
];

function selectTab(index, focus = false) {
  tabs.forEach(({ tab, panel }, i) => {
    const on = i === index;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    panel.hidden = !on;
  });
  if (focus) tabs[index].tab.focus();
  history.replaceState(null, "", index === 1 ? "#images" : "#chat");
}

tabs.forEach(({ tab }, i) => {
  tab.addEventListener("click", () => selectTab(i));
  // Arrow keys move between tabs, as in every tab list.
  tab.addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight" || e.key === "ArrowLeft") {
      e.preventDefault();
      selectTab((i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length, true);
    }
  });
});

async function enter(token) {
  let models;
  try {
    models = await listModels(token);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      forgetToken();
      showSignIn(`That token was refused: ${e.message}`);
    } else {
      showSignIn(e.message);
    }
    return false;
  }
  saveToken(token);
  $("sign-in-error").textContent = "";
  $("sign-in").hidden = true;
  $("tabs").hidden = false;
  $("sign-out").hidden = false;
  chat.setModels(models);
  images.setModels(models);
  selectTab(location.hash === "#images" ? 1 : 0);
  return true;
}

$("sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  $("sign-in-error").textContent = "Checking…";
  enter(token).then((ok) => ok && ($("token").value = ""));
});

$("sign-out").addEventListener("click", () => {
  chat.clear();
  forgetToken();
  showSignIn();
});

if (savedToken()) enter(savedToken());
else showSignIn();
