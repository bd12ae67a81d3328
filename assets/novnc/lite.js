// novabox's console page script: connects noVNC's RFB client to the websocket named by the
// page's ?path= (relative to this host), as noVNC's own vnc_lite.html does.
import RFB from './core/rfb.js';

function queryVariable(name, fallback) {
    const value = new URLSearchParams(window.location.search).get(name);
    return value === null ? fallback : value;
}

function status(text) {
    document.getElementById('status').textContent = text;
}

const path = queryVariable('path', 'websockify');
const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
const url = `${scheme}://${window.location.host}/${path.replace(/^\/+/, '')}`;

status('Connecting');
const rfb = new RFB(document.getElementById('screen'), url, { wsProtocols: ['binary'] });
rfb.viewOnly = queryVariable('view_only', 'false') === 'true';
rfb.scaleViewport = queryVariable('scale', 'false') === 'true';
rfb.addEventListener('connect', () => status('Connected to ' + (rfb._fbName || 'the guest')));
rfb.addEventListener('disconnect', (e) => status(e.detail.clean ? 'Disconnected' : 'Something went wrong, connection is closed'));
rfb.addEventListener('credentialsrequired', () => status('The guest asks for a password, which novabox does not set'));
rfb.addEventListener('desktopname', (e) => status('Connected to ' + e.detail.name));
document.getElementById('send_ctrl_alt_del').onclick = () => { rfb.sendCtrlAltDel(); return false; };
